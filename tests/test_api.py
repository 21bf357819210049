"""The Python API: the same runs as the CLI, in memory or streamed to files."""

from __future__ import annotations

import json
import re
import tempfile

import numpy as np
import pytest

import gpt2fast
from conftest import TINY_SEED
from gpt2fast import validation
from gpt2fast import reference
from gpt2fast.cli import main
from gpt2fast.errors import InputError
from gpt2fast.tokenizer import gpt2_encoding
from tiny_models import tiny_config, tiny_state

CFG = tiny_config()
PROMPTS = ["The cat sat on the mat.", "Consensus"]


def test_consensus_returns_what_the_cli_writes(tiny_checkpoint, tmp_path, capsys):
    assert main(["--weights", str(tiny_checkpoint), "--size", "3", "--matrixerror", "m", "--decode", "0,2",
                 "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]) == 0
    printed = capsys.readouterr().out
    result = gpt2fast.consensus(PROMPTS, weights=tiny_checkpoint, size=3, matrix=True, decode=(0, 2),
                                progress=False)
    # Bit for bit: the same engine on the same inputs in one process, the same operations
    assert np.array_equal(result.err, np.load(tmp_path / "Eplot.npy"), equal_nan=True)
    assert np.array_equal(result.err2, np.load(tmp_path / "m.npy"), equal_nan=True)
    written = json.loads((tmp_path / "Eplot.json").read_text())
    assert result.metadata["prompts"] == written["prompts"]
    assert result.metadata["flags"] == written["flags"]
    assert result.decoded == written["decoded"]
    assert result.metadata["files"]["err"]["path"] is None  # in memory, no file kept
    assert result.exit_status == 0 and result.n_layer == CFG.n_layer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Eplot.json", "Eplot.npy", "m.json", "m.npy"]
    assert printed.count("Decoded output") == 4


def test_consensus_matches_the_reference(tiny_checkpoint):
    tokens = gpt2_encoding().encode(PROMPTS[0])
    result = gpt2fast.consensus([tokens], weights=tiny_checkpoint, size=2, matrix=True, progress=False)
    err, err2, _ = reference.consensus(CFG, tiny_state(CFG, TINY_SEED), tokens, iterations=2)
    np.testing.assert_allclose(result.err[0], err.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.err2[0], err2.numpy(), rtol=1e-4, atol=1e-6)
    assert result.metadata["prompts"][0]["text"] == PROMPTS[0]


def test_consensus_streams_to_files_and_maps_them(tiny_checkpoint, tmp_path):
    result = gpt2fast.consensus(PROMPTS[1], weights=tiny_checkpoint, size=2, savefile=tmp_path / "E",
                                matrixerror=tmp_path / "G.npy", progress=False)
    assert isinstance(result.err, np.memmap) and isinstance(result.err2, np.memmap)
    assert result.metadata["files"]["err"]["path"] == str(tmp_path / "E.npy")
    loaded = gpt2fast.load_result(tmp_path / "E.npy", tmp_path / "G.npy")
    assert np.array_equal(loaded.err, result.err) and loaded.metadata == result.metadata


def test_err_only_run_has_no_matrices(tiny_checkpoint):
    result = gpt2fast.consensus(PROMPTS[1], weights=tiny_checkpoint, size=1, progress=False)
    assert result.err2 is None and result.err.shape == (1, CFG.n_layer, 2)


class BadPath:
    def __fspath__(self):
        return 3


@pytest.mark.parametrize("arguments, word", [
    ({"size": 0}, "size"),
    ({"size": 2.0}, "size must be an integer"),
    ({"size": 3, "decode": (5,)}, "decode"),
    ({"size": 3, "decode": [1.5]}, "decode must be an integer"),
    ({"size": 3, "decode": 2}, "list of iterations"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"model": "gpt3"}, "model"),
    ({"prompts": [[1, 70000]]}, "token ids"),
    ({"prompts": [[1, "a"]]}, "list of token ids"),
    ({"prompts": []}, "no prompts"),
    ({"prompts": [""]}, "empty"),
    ({"dtype": "fp8"}, "dtype"),
    ({"device": "tpu"}, "device"),
    ({"savefile": "no/such/dir/E"}, "does not exist"),
    ({"matrixerror": "E"}, "both name"),
    # types: a bool is not a number, bytes are not prompts, a string is not a flag
    ({"size": True}, "size must be an integer, got True"),
    ({"seed": 2**64}, r"seed must be in \[0, 2\*\*64\)"),
    ({"decode": [True]}, "decode must be an integer"),
    ({"prompts": b"hello"}, "not bytes"),
    ({"prompts": ["a", b"b"]}, "not bytes"),
    ({"noff": "False"}, "noff must be True or False"),
    ({"matrix": 1}, "matrix must be True or False"),
    ({"weights": 123}, "weights must be a checkpoint path"),
    ({"model": ["gpt2"]}, "model must be one of"),
    ({"backend": None}, "backend must be one of"),
    ({"savefile": ""}, "savefile must not be empty"),
    ({"matrixerror": 7}, "matrixerror must be a path"),
    ({"on_decode": "print"}, "on_decode must be callable"),
    # prompt sources: one at most, each checked
    ({"prompts": "a", "prompts_file": "p.txt"}, "choose one prompt source: prompts and prompts_file"),
    ({"prompts_file": "p.txt", "random_prompt": 3}, "prompts_file and random_prompt"),
    ({"random_prompts": 2}, "random_prompts needs random_prompt"),
    ({"random_prompt": 0}, r"random_prompt must be in \[1, 1024\]"),
    ({"random_prompt": True}, "random_prompt must be an integer"),
    ({"random_prompt": 2, "random_prompts": 0}, r"random_prompts must be in \[1, 1048576\]"),
    ({"random_prompt": 2, "random_prompts": 10**23}, r"random_prompts must be in \[1, 1048576\]"),
    ({"prompts": iter(["a"])}, "prompts must be a string, .* got list_iterator"),
    ({"prompts": ["a"] * (2**20 + 1)}, "1048577 prompts are more than one run takes"),
    ({"prompts_file": "missing.txt"}, "cannot read prompts file missing.txt"),
    ({"prompts_file": 5}, "prompts_file must be a path"),
    ({"prompts": ["a", "  "]}, "prompt 2 is empty"),
    # None is no value, a bool is no token id, a file name holds no NUL, label names arguments
    ({"size": None}, "size must be an integer, got None"),
    ({"seed": None}, "seed must be an integer, got None"),
    ({"prompts": [True]}, "prompt 1 must be a string or a list of token ids"),
    ({"prompts": [[5, False]]}, "prompt 1 must be a string or a list of token ids"),
    ({"savefile": "E\x00"}, "savefile: a file name cannot hold a NUL character"),
    ({"matrixerror": "\ud800"}, "matrixerror: .* cannot be encoded as a file name"),
    ({"weights": ""}, "weights must not be empty"),
    ({"weights": BadPath()}, "weights must be a path"),
    ({"label": None}, "label must be callable"),
])
def test_bad_arguments_raise_before_any_work(tiny_checkpoint, tmp_path, arguments, word):
    """Nothing is written, and the files of an earlier run are left as they were."""
    (tmp_path / "E.npy").write_bytes(b"earlier run")
    (tmp_path / "E.json").write_text("{}")
    with pytest.raises(InputError, match=word):
        gpt2fast.consensus(**{"weights": tiny_checkpoint, "progress": False, "savefile": "E", **arguments})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E.json", "E.npy"]
    assert (tmp_path / "E.npy").read_bytes() == b"earlier run" and (tmp_path / "E.json").read_text() == "{}"


def test_one_token_id_list_is_one_prompt(tiny_checkpoint):
    result = gpt2fast.consensus([464, 2068, 7586], weights=tiny_checkpoint, size=1, progress=False)
    assert result.err.shape[0] == 1 and result.metadata["prompts"][0]["tokens"] == [464, 2068, 7586]


def test_in_memory_arrays_leave_no_paths_to_deleted_files(tiny_checkpoint, tmp_path):
    result = gpt2fast.consensus("a b c", weights=tiny_checkpoint, size=2, savefile="E", matrix=True,
                                progress=False)
    written = json.loads((tmp_path / "E.json").read_text())
    assert written["files"]["err"]["path"] == "E.npy" and written["files"]["err2"]["path"] is None
    assert isinstance(result.err, np.memmap) and not isinstance(result.err2, np.memmap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E.json", "E.npy"]


def test_err_in_memory_beside_err2_in_a_file(tiny_checkpoint, tmp_path):
    """err2 streamed to a file the writer makes (its partial appears only at the end) while
    err stays in memory: the run records and promotes its metadata all the same."""
    result = gpt2fast.consensus("a b c", weights=tiny_checkpoint, size=2, matrixerror="m", progress=False)
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["files"]["err"]["path"] is None and written["files"]["err2"]["path"] == "m.npy"
    assert written["status"] == "complete" and type(result.err) is np.ndarray and isinstance(result.err2, np.memmap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.npy"]


def test_results_in_memory_touch_no_disk(tiny_checkpoint, tmp_path, monkeypatch):
    """Without files the driver fills arrays in memory: no file is made anywhere, the
    temporary folder included, and the arrays equal what a run to files writes."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    monkeypatch.chdir(temporary)
    seen = []  # what the temporary folder holds while the run runs (a decode iteration's callback)
    result = gpt2fast.consensus(PROMPTS, weights=tiny_checkpoint, size=3, matrix=True, matrix_every=2,
                                matrix_dtype="float16", progress=False, decode=(1,),
                                on_decode=lambda *_: seen.append(list(temporary.rglob("*"))))
    assert seen == [[], []] and list(temporary.iterdir()) == []
    assert type(result.err) is np.ndarray and type(result.err2) is np.ndarray and result.err2.dtype == np.float16
    assert result.metadata["files"]["err2"]["path"] is None and result.metadata["status"] == "complete"
    monkeypatch.chdir(tmp_path)
    filed = gpt2fast.consensus(PROMPTS, weights=tiny_checkpoint, size=3, savefile="E", matrixerror="m",
                               matrix_every=2, matrix_dtype="float16", progress=False)
    assert np.array_equal(result.err, filed.err, equal_nan=True)
    assert np.array_equal(result.err2, filed.err2, equal_nan=True)


def test_matrix_in_memory_that_does_not_fit_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "available_memory", lambda device: 40 << 20)  # the tiny model's 28 MB fit
    with pytest.raises(InputError, match="matrixerror=PATH"):  # err2: 72 MB
        gpt2fast.consensus("a b c", weights=tiny_checkpoint, size=10**6, matrix=True, progress=False)
    assert not list(tmp_path.iterdir())


def test_generate_returns_what_the_cli_prints(tiny_checkpoint, capsys):
    assert main(["--weights", str(tiny_checkpoint), "--use-model", "12", "--seed", "3",
                 "--prompt", PROMPTS[0]]) == 0
    printed = capsys.readouterr().out
    result = gpt2fast.generate(PROMPTS[0], weights=tiny_checkpoint, max_length=12, seed=3, progress=False)
    assert printed == f"> {result.texts[0]}\n"
    assert len(result.tokens[0]) == 12 and result.exit_status == 0


def test_load_result_reads_the_original_files_without_metadata(tmp_path):
    err = np.random.default_rng(0).random((1, 24, 2), dtype=np.float32)
    np.save(tmp_path / "Eplot.npy", err)
    result = gpt2fast.load_result(tmp_path / "Eplot")
    assert result.metadata is None and result.n_layer is None and result.decoded == []
    assert np.array_equal(result.err, err)


def test_no_gpt2_token_is_longer_than_the_prompt_byte_bound():
    encoding = gpt2_encoding()
    assert max(len(encoding.decode_single_token_bytes(i)) for i in range(encoding.n_vocab)) <= validation.MAX_TOKEN_BYTES


@pytest.mark.parametrize("prompt, message", [
    ("a \udcff b", "prompt 1 is not valid UTF-8"),  # a byte that was not UTF-8, as argv and stdin decode it
    ("x" * (1024 * validation.MAX_TOKEN_BYTES + 1), "bytes, more than 1024 tokens can hold"),
])
def test_prompts_that_cannot_be_text_or_cannot_fit_are_refused(tiny_checkpoint, prompt, message):
    with pytest.raises(InputError, match=message):
        gpt2fast.consensus(prompt, weights=tiny_checkpoint, size=1, progress=False)


def test_weights_with_nan_or_inf_are_refused_on_load(tmp_path):
    from tiny_models import write_hf_safetensors

    cfg = tiny_config()
    state = tiny_state(cfg, TINY_SEED)
    state["h.1.mlp.c_fc.weight"][3, 4] = float("inf")
    write_hf_safetensors(tmp_path, cfg, state)
    with pytest.raises(InputError, match=r"h\.1\.mlp\.c_fc\.weight holds NaN or infinite values"):
        gpt2fast.consensus("a b", weights=tmp_path, size=1, progress=False)


def test_a_config_beyond_memory_is_refused_before_allocating(tmp_path):
    """A config.json claiming 10**9 layers: refused from the safetensors header (it holds 2
    blocks), and beside a pickled checkpoint (no header to read) from the memory the weights
    would need, before anything is loaded."""
    from tiny_models import write_hf_bin, write_hf_safetensors

    cfg = tiny_config()
    for folder, write, message in ((tmp_path / "st", write_hf_safetensors, "holds 2 blocks, the model of n_layer=1000000000"),
                                   (tmp_path / "bin", write_hf_bin, "n_layer=1000000000, n_embd=128 needs .* of memory")):
        write(folder, cfg, tiny_state(cfg, TINY_SEED))
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"n_layer": 10**9}))
        with pytest.raises(InputError, match=message):
            gpt2fast.consensus("a b", weights=folder, size=1, progress=False)


def test_a_temperature_that_overflows_the_logits_samples_the_most_likely_token():
    import torch

    from gpt2fast.generation import sample_top_k

    logits = torch.tensor([0.5, 3.0, -2.0, 2.9])
    for temperature in (1e-300, 1e-45):
        assert sample_top_k(logits, 3, temperature, torch.Generator().manual_seed(0)) == 1


def test_prompts_from_a_file_or_drawn_at_random_equal_the_cli_runs(tiny_checkpoint, tmp_path):
    (tmp_path / "p.txt").write_text("one two\nthree four five\n")
    for source in ({"prompts_file": "p.txt"}, {"random_prompt": 5, "random_prompts": 2}):
        flags = ["--prompts-file", "p.txt"] if "prompts_file" in source else ["--random-prompt", "5",
                                                                               "--random-prompts", "2"]
        assert main(["--weights", str(tiny_checkpoint), "--size", "2", "--seed", "4", *flags]) == 0
        result = gpt2fast.consensus(weights=tiny_checkpoint, size=2, seed=4, progress=False, **source)
        assert np.array_equal(result.err, np.load(tmp_path / "Eplot.npy"))
        assert result.metadata["prompts"] == json.loads((tmp_path / "Eplot.json").read_text())["prompts"]
        assert len(result.metadata["prompts"]) == 2


def test_a_prompt_function_is_called_only_once_everything_else_is_checked(tiny_checkpoint, tmp_path):
    asked = []

    def ask():
        asked.append(True)
        return ["a b"]

    for bad, message in (({"savefile": "no/such/dir/E"}, "directory no/such/dir does not exist"),
                         ({"weights": tmp_path / "missing.safetensors"}, "missing.safetensors: no such file"),
                         ({"size": 0}, "size must be at least 1, got 0")):
        with pytest.raises(InputError, match=message):
            gpt2fast.consensus(ask, **{"weights": tiny_checkpoint, "size": 1, "progress": False, **bad})
    assert asked == []
    assert gpt2fast.consensus(ask, weights=tiny_checkpoint, size=1, progress=False).err.shape[0] == 1
    assert asked == [True]


@pytest.mark.parametrize("arguments, flags, name", [
    ({"size": 0}, ["--size", "0"], "size"),
    ({"random_prompts": 2}, ["--random-prompts", "2"], "random_prompts"),
    ({"savefile": "no/such/dir/E"}, ["--savefile", "no/such/dir/E"], "savefile"),
    ({"max_length": 5000}, ["--use-model", "5000"], "max_length"),
])
def test_the_api_names_parameters_and_the_cli_names_flags(tiny_checkpoint, capsys, arguments, flags, name):
    """One check for both: the same refusal, named the caller's way."""
    run = gpt2fast.generate if "max_length" in arguments else gpt2fast.consensus
    with pytest.raises(InputError) as refused:
        run("a", weights=tiny_checkpoint, progress=False, **arguments)
    assert str(refused.value).startswith(name)
    assert main(["--weights", str(tiny_checkpoint), *flags]) == 2
    as_flags = re.sub(r"\b(size|random_prompts?|savefile|max_length)\b",
                      lambda word: {"max_length": "--use-model"}.get(word[0], "--" + word[0].replace("_", "-")),
                      str(refused.value))
    assert capsys.readouterr().err == f"gpt2fast: error: {as_flags}\n"


def test_numpy_integers_are_integers(tiny_checkpoint):
    result = gpt2fast.consensus("a b", weights=tiny_checkpoint, size=np.int64(2), seed=np.uint32(3), progress=False)
    assert result.metadata["flags"]["size"] == 2 and result.metadata["flags"]["seed"] == 3
    grown = gpt2fast.generate("a b", weights=tiny_checkpoint, max_length=np.int16(4), top_k=np.int64(2),
                              temperature=np.float32(0.5), progress=False)
    assert len(grown.tokens[0]) == 4


def test_random_prompts_of_whitespace_are_drawn_not_refused(tiny_checkpoint):
    """Seed 1054 draws a token that decodes to a newline: a prompt the tool made, so it runs
    (a whitespace prompt the user gives is refused: the table above)."""
    result = gpt2fast.consensus(weights=tiny_checkpoint, random_prompt=1, random_prompts=3, seed=1054, size=1,
                                progress=False)
    assert [prompt["text"] for prompt in result.metadata["prompts"]][2] == "\n"
