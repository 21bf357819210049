"""The command line end to end on a tiny checkpoint: files, metadata, printing, prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY_SEED
from gpt2fast import reference
from gpt2fast.kernels import panel_linear
from gpt2fast.cli import main
from gpt2fast.config import DEFAULT_PROMPT
from gpt2fast.tokenizer import gpt2_encoding
from tiny_models import tiny_config, tiny_state

CFG = tiny_config()


def run_cli(args, stdin="", env_cwd=None):
    """``python -m gpt2fast`` in a subprocess (real exit status, stdin and signals)."""
    return subprocess.run(
        [sys.executable, "-m", "gpt2fast", *args], input=stdin, capture_output=True,
        text=True, cwd=env_cwd, timeout=300,
    )


def test_consensus_run_writes_the_original_files(tiny_checkpoint, tmp_path, capsys):
    status = main([
        "--weights", str(tiny_checkpoint), "--size", "2", "--prompt", "The cat sat",
        "--prompt", "A much longer prompt about cats and dogs", "--matrixerror", "m",
        "--decode", "1,0,1",
    ])
    assert status == 0
    err, m = np.load("Eplot.npy"), np.load("m.npy")
    encoding = gpt2_encoding()
    prompts = ["The cat sat", "A much longer prompt about cats and dogs"]
    token_lists = [encoding.encode(text) for text in prompts]
    longest = max(map(len, token_lists))
    assert err.shape == (2, CFG.n_layer * 2, 2) and err.dtype == np.float32
    assert m.shape == (2, longest, longest, CFG.n_layer * 2) and m.dtype == np.float32
    state = tiny_state(CFG, TINY_SEED)
    out = capsys.readouterr().out
    for p, tokens in enumerate(token_lists):
        ref_err, ref_gram, ref_decoded = reference.consensus(CFG, state, tokens, iterations=2,
                                                             decode_iterations=(0, 1))
        np.testing.assert_allclose(err[p], ref_err.numpy(), rtol=1e-4, atol=1e-5)
        t = len(tokens)
        np.testing.assert_allclose(m[p, :t, :t], ref_gram.numpy(), rtol=1e-4, atol=1e-5)
        for i in (0, 1):  # exact: the top two logits differ by >= 1e-3 of the largest, far above rounding
            assert f"Decoded output for prompt {p + 1}, iteration {i}:\n> {encoding.decode(ref_decoded[i])}\n" in out
    assert out.count("Decoded output") == 4
    meta = json.loads(open("Eplot.json").read())
    assert meta == json.loads(open("m.json").read())
    assert meta["complete"] is True and meta["status"] == "complete"
    assert meta["steps_completed"] == meta["steps_total"] == CFG.n_layer * 2
    assert meta["flags"]["decode"] == [0, 1] and meta["flags"]["size"] == 2
    assert [p["tokens"] for p in meta["prompts"]] == token_lists
    assert meta["model"]["n_layer"] == CFG.n_layer and meta["device"] == "cpu"
    assert meta["dtype"] == "fp32" and meta["backend"] == "torch" and meta["products"] == "ieee"
    assert meta["weights"]["source"].endswith("model.safetensors") and len(meta["weights"]["sha256"]) == 64
    assert meta["files"]["err2"]["shape"] == list(m.shape)
    assert {"torch", "numpy", "python"} <= set(meta["versions"])
    assert meta["host"]["panel_kernel"] == panel_linear.kernel_variant() and meta["host"]["processor"]


def test_npy_suffix_is_not_doubled(tiny_checkpoint, tmp_path):
    assert main(["--weights", str(tiny_checkpoint), "--size", "1", "--prompt", "x",
                 "--savefile", "out.npy", "--matrixerror", "mat.npy"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".npy", ".json")) == [
        "mat.json", "mat.npy", "out.json", "out.npy"]


def test_default_prompt_when_stdin_is_empty(tiny_checkpoint, tmp_path):
    result = run_cli(["--weights", str(tiny_checkpoint), "--size", "1"], stdin="", env_cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "Eplot.npy").shape == (1, CFG.n_layer, 2)
    meta = json.loads((tmp_path / "Eplot.json").read_text())
    assert meta["prompts"][0]["text"] == DEFAULT_PROMPT and meta["prompts"][0]["length"] == 27
    assert "consensus" in result.stderr and "steps/s" in result.stderr


def test_piped_prompts_stop_at_empty_line(tiny_checkpoint, tmp_path):
    result = run_cli(["--weights", str(tiny_checkpoint), "--size", "1"],
                     stdin="first prompt\nsecond one here\n\nnot a prompt\n", env_cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "Eplot.json").read_text())
    assert [p["text"] for p in meta["prompts"]] == ["first prompt", "second one here"]
    assert np.load(tmp_path / "Eplot.npy").shape[0] == 2
    assert "Enter prompt" not in result.stdout


def test_random_prompts_are_seeded(tiny_checkpoint, tmp_path):
    def texts(seed):
        assert main(["--weights", str(tiny_checkpoint), "--size", "1", "--random-prompt", "6",
                     "--random-prompts", "3", "--seed", str(seed)]) == 0
        return [p["text"] for p in json.loads(open("Eplot.json").read())["prompts"]]

    first = texts(1)
    assert len(first) == 3 and len(set(first)) == 3
    assert texts(1) == first and texts(2) != first
    assert all(len(text.split(" ")) >= 6 for text in first)


def test_prompts_file(tiny_checkpoint, tmp_path):
    (tmp_path / "prompts.txt").write_text("one\n\ntwo two\n")
    assert main(["--weights", str(tiny_checkpoint), "--size", "1", "--prompts-file", "prompts.txt"]) == 0
    assert [p["text"] for p in json.loads(open("Eplot.json").read())["prompts"]] == ["one", "two two"]


def test_generation_prints_the_grown_prompt(tiny_checkpoint, tmp_path, capsys):
    prompt = "The robots of the city"
    assert main(["--weights", str(tiny_checkpoint), "--use-model", "14", "--top-k", "1",
                 "--prompt", prompt]) == 0
    tokens = gpt2_encoding().encode(prompt)
    # Exact: every greedy step's top two logits differ by >= 3e-2 of the largest, far above rounding
    expected = reference.generate(CFG, tiny_state(CFG, TINY_SEED), tokens, max_length=14, top_k=1)
    assert capsys.readouterr().out == f"> {gpt2_encoding().decode(expected)}\n"
    assert not list(tmp_path.glob("*.npy"))


def test_generation_truncates_a_long_prompt(tiny_checkpoint, capsys):
    prompt = "one two three four five six seven"
    assert main(["--weights", str(tiny_checkpoint), "--use-model", "3", "--prompt", prompt]) == 0
    assert capsys.readouterr().out == f"> {gpt2_encoding().decode(gpt2_encoding().encode(prompt)[:3])}\n"


def test_generation_notes_ignored_flags(tiny_checkpoint, capsys):
    assert main(["--weights", str(tiny_checkpoint), "--use-model", "8", "--prompt", "a b c",
                 "--decode", "0", "--matrixerror", "m"]) == 0
    err = capsys.readouterr().err
    assert "--decode has no effect" in err and "--matrixerror has no effect" in err


@pytest.mark.parametrize("sig,status", [("INT", 130), ("TERM", 143)])
def test_interrupt_leaves_valid_files(tiny_checkpoint, tmp_path, sig, status):
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2fast", "--weights", str(tiny_checkpoint), "--size", "100000",
         "--prompt", "a b c d", "--matrixerror", "m"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while not (tmp_path / "Eplot.partial.json").exists() and time.time() < deadline:  # the run has begun
        time.sleep(0.2)
    time.sleep(2.0)
    process.send_signal(getattr(signal, f"SIG{sig}"))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    meta = json.loads((tmp_path / "Eplot.json").read_text())
    assert meta["complete"] is False and meta["status"] == "interrupted"
    done = meta["steps_completed"]
    assert 0 < done < meta["steps_total"]
    err, m = np.load(tmp_path / "Eplot.npy"), np.load(tmp_path / "m.npy", mmap_mode="r")
    assert np.isfinite(err[:, :done]).all() and np.isnan(err[:, done:]).all()
    assert np.isfinite(m[..., :done]).all() and np.isnan(m[..., done : done + 10]).all()
    assert "INTERRUPTED" in stderr


def test_interactive_terminal_asks_like_the_original(tiny_checkpoint, tmp_path):
    """On a terminal the questions are printed and answered one per line; Enter ends."""
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2fast", "--weights", str(tiny_checkpoint), "--size", "1"],
        cwd=tmp_path, stdin=terminal, stdout=terminal, stderr=subprocess.PIPE,
    )
    os.close(terminal)
    seen = b""

    def wait_for(text: bytes):
        nonlocal seen
        while text not in seen:
            ready, _, _ = select.select([controller], [], [], 60)
            assert ready, f"no {text!r} on the terminal; got {seen!r}"
            seen += os.read(controller, 1024)

    wait_for(b"Enter prompt 1 (or press Enter to finish): ")
    os.write(controller, b"a first prompt\n")
    wait_for(b"Enter prompt 2 (or press Enter to finish): ")
    os.write(controller, b"\n")
    assert process.wait(timeout=120) == 0, process.stderr.read()
    os.close(controller)
    meta = json.loads((tmp_path / "Eplot.json").read_text())
    assert [p["text"] for p in meta["prompts"]] == ["a first prompt"]


CTRL_C_WHILE_TORCH_LOADS = """
import runpy, sys

class CtrlC:  # the KeyboardInterrupt a Ctrl-C raises while torch is being imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlC())
sys.argv = ["gpt2fast", "--size", "1", "--prompt", "a"]
runpy.run_module("gpt2fast", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_while_the_program_starts_is_one_line_and_status_130():
    """The first second of ``python -m gpt2fast`` imports torch; the package itself does not
    (its API loads on first use), so a Ctrl-C then is the CLI's one line, not a traceback."""
    result = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_TORCH_LOADS], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stderr.strip()) == (130, "gpt2fast: interrupted")


def test_ctrl_c_at_the_prompt_question_is_one_line_and_status_130(tiny_checkpoint, tmp_path):
    import pty
    import select
    import signal

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2fast", "--weights", str(tiny_checkpoint), "--size", "1"],
        cwd=tmp_path, stdin=terminal, stdout=terminal, stderr=subprocess.PIPE, text=True,
    )
    os.close(terminal)
    seen = b""
    while b"Enter prompt 1" not in seen:
        ready, _, _ = select.select([controller], [], [], 60)
        assert ready, seen
        seen += os.read(controller, 1024)
    process.send_signal(signal.SIGINT)  # what Ctrl-C on its terminal sends
    assert process.wait(timeout=60) == 130
    os.close(controller)
    assert process.stderr.read().strip().splitlines() == ["gpt2fast: interrupted"]
    assert sorted(os.listdir(tmp_path)) == []


def test_bf16_is_opt_in_and_recorded(tiny_checkpoint):
    assert main(["--weights", str(tiny_checkpoint), "--size", "1", "--prompt", "a b c d e",
                 "--savefile", "fp32"]) == 0
    assert main(["--weights", str(tiny_checkpoint), "--size", "1", "--prompt", "a b c d e",
                 "--savefile", "bf16", "--dtype", "bf16"]) == 0
    assert json.loads(open("bf16.json").read())["dtype"] == "bf16"
    exact, rough = np.load("fp32.npy"), np.load("bf16.npy")
    assert not np.array_equal(exact, rough)
    np.testing.assert_allclose(rough, exact, atol=2e-2)


def test_a_write_failure_during_the_run_is_one_line_and_status_1(tiny_checkpoint, tmp_path):
    """The run's err2 outgrows the file-size limit (RLIMIT_FSIZE: writes past it fail as on
    a full disk): one line, status 1, the earlier results untouched, the partial metadata
    saying why."""
    import resource
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    (tmp_path / "m.npy").write_bytes(b"earlier results")
    (tmp_path / "m.partial.npy").symlink_to(tmp_path / "m.npy")  # a link left there is removed, not followed
    process = subprocess.run(
        [sys.executable, "-m", "gpt2fast", "--weights", str(tiny_checkpoint), "--size", "20", "--prompt",
         " ".join(["word"] * 32), "--matrixerror", "m"],
        capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, preexec_fn=limit_file_size)
    err = process.stderr.strip().split("\n")[-1]
    assert process.returncode == 1, process.stderr
    assert err.startswith("gpt2fast: error:") and "m.partial.npy" in err and "File too large" in err
    assert (tmp_path / "m.npy").read_bytes() == b"earlier results" and not (tmp_path / "Eplot.npy").exists()
    meta = json.loads((tmp_path / "Eplot.partial.json").read_text())
    assert meta["status"] == "failed" and meta["complete"] is False and "File too large" in meta["error"]
    assert not list(tmp_path.glob("*.tmp"))


def test_triton_backend_from_the_command_line(tiny_checkpoint):
    """Under the interpreter (tests/conftest.py) the Triton backend runs on the CPU."""
    common = ["--weights", str(tiny_checkpoint), "--size", "1", "--prompt", "a b c d e", "--prompt", "f"]
    assert main(common + ["--backend", "triton", "--savefile", "tri"]) == 0
    assert main(common + ["--backend", "torch", "--savefile", "tor"]) == 0
    assert json.loads(open("tri.json").read())["backend"] == "triton"
    assert json.loads(open("tor.json").read())["backend"] == "torch"
    np.testing.assert_allclose(np.load("tri.npy"), np.load("tor.npy"), rtol=1e-4, atol=1e-5)


def test_triton_backend_in_bf16_from_the_command_line(tiny_checkpoint):
    common = ["--weights", str(tiny_checkpoint), "--size", "1", "--prompt", "a b c d e", "--dtype", "bf16"]
    assert main(common + ["--backend", "triton", "--savefile", "tri"]) == 0
    assert main(common + ["--backend", "torch", "--savefile", "tor"]) == 0
    meta = json.loads(open("tri.json").read())
    assert (meta["backend"], meta["dtype"], meta["products"]) == ("triton", "bf16", "bf16")
    np.testing.assert_allclose(np.load("tri.npy"), np.load("tor.npy"), rtol=0, atol=2e-2)


def test_memory_that_runs_out_during_the_run_is_one_line_and_status_1(tiny_checkpoint, tmp_path, capsys,
                                                                     monkeypatch):
    """The CPU allocator failing at iteration 1 (as under ``ulimit -v``): one line, status 1,
    the earlier results in place, the partial metadata saying why."""
    from gpt2fast.backends.torch_backend import TorchEngine

    iteration = TorchEngine.iteration

    def allocation_fails_at_1(self, index, err_out, gram_out):
        if index == 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 4831838208 bytes.")
        iteration(self, index, err_out, gram_out)

    monkeypatch.setattr(TorchEngine, "iteration", allocation_fails_at_1)
    (tmp_path / "Eplot.npy").write_bytes(b"earlier results")
    status = main(["--weights", str(tiny_checkpoint), "--size", "3", "--prompt", "a b", "--backend", "torch"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gpt2fast")]
    assert status == 1 and lines == ["gpt2fast: error: out of memory: [enforce fail at alloc_cpu.cpp:117] "
                                     "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4831838208 "
                                     "bytes."]
    assert (tmp_path / "Eplot.npy").read_bytes() == b"earlier results"
    meta = json.loads((tmp_path / "Eplot.partial.json").read_text())
    assert meta["status"] == "failed" and "can't allocate memory" in meta["error"]
