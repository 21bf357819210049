"""Bad input: one line on stderr, exit status 2, before any work, no file touched (SPEC §8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gpt2fast.cli import main
from tiny_models import tiny_config, tiny_state, write_hf_safetensors

# (case id, arguments, a word the message must contain); TINY / CORRUPT / MISMATCHED / ADIR
# stand for paths the test fixture creates.
BAD_INVOCATIONS = [
    ("size-zero", ["--size", "0"], "--size"),
    ("size-negative", ["--size", "-4"], "--size"),
    ("size-not-a-number", ["--size", "ten"], "--size"),
    ("decode-out-of-range", ["--size", "3", "--decode", "0,3"], "--decode"),
    ("decode-not-integer", ["--size", "3", "--decode", "1,x"], "--decode"),
    ("decode-empty", ["--size", "3", "--decode", ""], "--decode"),
    ("decode-negative", ["--size", "3", "--decode", "-1"], "--decode"),
    ("decode-trailing-comma", ["--size", "3", "--decode", "1,"], "--decode"),
    ("unknown-model", ["--model", "gpt3"], "--model"),
    ("unknown-flag", ["--fast"], "--fast"),
    ("missing-weights", ["--weights", "no/such/ckpt.safetensors"], "no/such/ckpt.safetensors"),
    ("corrupt-weights", ["--weights", "CORRUPT"], "corrupt.safetensors"),
    ("mismatched-weights", ["--weights", "MISMATCHED", "--model", "gpt2"], "n_layer"),
    ("config-disagrees-with-header", ["--weights", "NARROWED"], "wte.weight has shape (50257, 128), the model needs (50257, 64)"),
    ("output-dir-missing", ["--weights", "TINY", "--savefile", "no/such/dir/E"], "does not exist"),
    ("output-is-directory", ["--weights", "TINY", "--savefile", "ADIR"], "directory"),
    ("output-unwritable", ["--weights", "TINY", "--matrixerror", "/proc/m"], "cannot write"),
    ("same-output-twice", ["--savefile", "m", "--matrixerror", "m.npy"], "both name"),
    ("savefile-empty", ["--savefile", ""], "--savefile must not be empty"),
    ("matrixerror-blank", ["--matrixerror", " "], "--matrixerror must not be empty"),
    ("seed-past-64-bits", ["--seed", str(2**64)], "--seed must be in"),
    ("prompt-too-long", ["--weights", "TINY", "--prompt", "word " * 1100], "1024"),
    ("prompt-empty", ["--prompt", "  "], "empty"),
    ("random-prompt-zero", ["--random-prompt", "0"], "--random-prompt"),
    ("random-prompt-over-context", ["--random-prompt", "5000"], "--random-prompt"),
    ("random-prompt-re-encodes-over-context", ["--random-prompt", "1024"], "--random-prompt 1024: the random text"),
    ("random-prompts-without-length", ["--random-prompts", "3"], "--random-prompt"),
    ("two-prompt-sources", ["--prompt", "a", "--random-prompt", "3"], "prompt source"),
    ("prompts-file-missing", ["--weights", "TINY", "--prompts-file", "nope.txt"], "nope.txt"),
    ("use-model-over-context", ["--use-model", "2000"], "--use-model"),
    ("use-model-zero", ["--use-model", "0"], "--use-model"),
    ("top-k-zero", ["--top-k", "0"], "--top-k"),
    ("temperature-zero", ["--temperature", "0"], "--temperature"),
    ("temperature-nan", ["--temperature", "nan"], "--temperature"),
    ("seed-negative", ["--seed", "-1"], "--seed"),
    ("tf32-on-cpu", ["--dtype", "tf32", "--device", "cpu"], "tf32"),
    ("unknown-backend", ["--backend", "jax"], "--backend"),
    ("output-too-big-for-disk", ["--weights", "TINY", "--size", "100000000000", "--prompt", "a"], "refusing"),
    # a byte count past 2**63 (numpy's int64 wrapped it negative and the check passed)
    ("output-size-past-int64", ["--weights", "TINY", "--size", "1000000000000000000", "--prompt", "a b c d",
                                "--matrixerror", "m"], "refusing"),
]
if not torch.cuda.is_available():
    BAD_INVOCATIONS.append(("cuda-without-gpu", ["--device", "cuda"], "cuda"))


@pytest.fixture
def paths(tmp_path, tiny_checkpoint):
    """Stand-in paths for the table, and an existing output the run must not touch."""
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    mismatched = tmp_path / "mismatched"
    write_hf_safetensors(mismatched, tiny_config(n_layer=1), tiny_state(tiny_config(n_layer=1), 0))
    narrowed = tmp_path / "narrowed"
    write_hf_safetensors(narrowed, tiny_config(), tiny_state(tiny_config(), 0))
    config = json.loads((narrowed / "config.json").read_text())
    (narrowed / "config.json").write_text(json.dumps(config | {"n_embd": 64}))
    (tmp_path / "adir.npy").mkdir()
    (tmp_path / "Eplot.npy").write_bytes(b"an existing result")
    return {"TINY": str(tiny_checkpoint), "CORRUPT": str(corrupt), "MISMATCHED": str(mismatched),
            "ADIR": str(tmp_path / "adir.npy"), "NARROWED": str(narrowed)}


def snapshot(directory):
    return {path.relative_to(directory): (path.read_bytes() if path.is_file() else None, path.stat().st_mtime_ns)
            for path in directory.rglob("*")}


@pytest.mark.parametrize("case,args,word", BAD_INVOCATIONS, ids=[case for case, _, _ in BAD_INVOCATIONS])
def test_bad_invocation(case, args, word, paths, tmp_path, capsys):
    args = [paths.get(arg, arg) for arg in args]
    before = snapshot(tmp_path)
    status = main(args)
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("gpt2fast: error: "), captured.err
    assert word in lines[0]
    assert captured.out == ""
    assert snapshot(tmp_path) == before


def test_table_is_large_enough():
    assert len(BAD_INVOCATIONS) >= 15


def test_process_exit_status_and_single_line(tmp_path):
    (tmp_path / "Eplot.npy").write_bytes(b"keep me")
    result = subprocess.run([sys.executable, "-m", "gpt2fast", "--size", "0"], capture_output=True,
                            text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, env={**os.environ})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("gpt2fast: error: --size")
    assert (tmp_path / "Eplot.npy").read_bytes() == b"keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: --backend triton is valid")
def test_triton_backend_without_gpu_or_interpreter(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["--backend", "triton", "--size", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend triton needs a CUDA GPU" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("forced", ["sse9", "AVX-512"])
def test_a_panel_kernel_variant_this_machine_lacks(monkeypatch, tmp_path, capsys, forced):
    monkeypatch.setenv("GPT2FAST_PANEL_KERNEL", forced)
    assert main(["--weights", "random", "--size", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gpt2fast: error: GPT2FAST_PANEL_KERNEL={forced.lower()}: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["prompt-too-long", "prompt-too-long-for-medium", "prompts-file-missing",
                                  "output-too-big-for-disk", "output-size-past-int64", "missing-weights",
                                  "corrupt-weights", "mismatched-weights", "config-disagrees-with-header",
                                  "use-model-over-context"])
def test_refused_before_any_weight_is_read(case, paths, tmp_path, capsys, monkeypatch):
    """The refusals that need no weights come before any are loaded or drawn (gpt2-medium's
    random weights would take 1.4 GB), and before the prompt questions."""
    import gpt2fast.api

    def no_weights(*arguments, **keywords):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(gpt2fast.api, "load_weights", no_weights)
    table = dict((name, args) for name, args, _ in BAD_INVOCATIONS)
    table["prompt-too-long-for-medium"] = ["--model", "gpt2-medium", "--weights", "random", "--prompt", "word " * 1100]
    args = [paths.get(arg, arg) for arg in table[case]]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("gpt2fast: error:")
