"""Data-parallel runs under torchrun on the CPU (gloo): the same files as one process, and a
job that ends together, with its metadata saying how far each rank got (``distributed``,
``run_status``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpt2fast
from gpt2fast.api import check_consensus_arguments
from gpt2fast.distributed import balance, shard_by_tokens
from gpt2fast.errors import InputError
from gpt2fast.run_status import LOST_AFTER
from gpt2fast.validation import parameter

PROMPTS = ["a b c d e f g", "x", "the quick brown fox jumps over", "hello world", "one two three four five six",
           "so"]
LONG_RUN = 200_000


def torchrun(checkpoint: Path, folder: Path, *flags: str, ranks: int = 2, prompts=PROMPTS) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node ranks -m gpt2fast`` on the tiny checkpoint."""
    prompt_flags = [part for text in prompts for part in ("--prompt", text)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m", "gpt2fast",
         "--weights", str(checkpoint), "--backend", "torch", *prompt_flags, *flags],
        cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen, seconds: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=seconds)
    return process.returncode, out, err


def ranks_running(folder: Path, ranks: int = 2) -> dict | None:
    """The partial metadata once every rank runs and has flushed its first rows, else None."""
    try:
        meta = json.loads((folder / "Eplot.partial.json").read_text())
        err = np.load(folder / "Eplot.partial.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    running = all(rank["status"] == "running" for rank in meta["ranks"]) and len(meta["ranks"]) == ranks
    return meta if running and np.isfinite(err[:, 0]).all() else None


def wait_for(condition, seconds: float = 120.0):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return found


@pytest.mark.parametrize("flags", [
    ["--size", "3"],
    ["--size", "3", "--matrixerror", "m", "--decode", "0,2"],
    ["--size", "2", "--random-init", "--const-reset", "--matrixerror", "m", "--decode", "1"],
], ids=["err", "err2-decode", "redraws"])
def test_two_ranks_write_what_one_process_writes(tiny_checkpoint, tmp_path, flags):
    status, out, err = finished(torchrun(tiny_checkpoint, tmp_path, *flags))
    assert status == 0, err
    size = int(flags[1])
    single = gpt2fast.consensus(PROMPTS, weights=tiny_checkpoint, size=size, backend="torch", progress=False,
                                random_init="--random-init" in flags, const_reset="--const-reset" in flags,
                                matrix="--matrixerror" in flags, decode=json.loads(f"[{flags[-1]}]")
                                if "--decode" in flags else ())
    meta = json.loads((tmp_path / "Eplot.json").read_text())
    assert meta["status"] == "complete" and meta["world_size"] == 2
    assert sorted(p for rank in meta["ranks"] for p in rank["prompts"]) == list(range(len(PROMPTS)))
    assert all(rank["status"] == "complete" and rank["device"] == "cpu" for rank in meta["ranks"])
    np.testing.assert_allclose(np.load(tmp_path / "Eplot.npy"), single.err, rtol=1e-5, atol=1e-6)
    if "--matrixerror" in flags:
        np.testing.assert_allclose(np.load(tmp_path / "m.npy"), single.err2, rtol=1e-5, atol=1e-6)
        assert json.loads((tmp_path / "m.json").read_text()) == meta
    assert meta["decoded"] == single.metadata["decoded"]
    assert len(meta["decoded"]) == len(PROMPTS) * len(single.metadata["flags"]["decode"])
    assert out.count("Decoded output for prompt") == len(meta["decoded"])
    assert [line for line in err.splitlines() if line.startswith("gpt2fast:")] == [
        next(line for line in err.splitlines() if line.startswith("gpt2fast: done:"))]
    assert not list(tmp_path.glob("*partial*")) and not list(tmp_path.glob(".*lock"))


def test_a_killed_rank_ends_the_job_and_the_metadata_says_how_far_each_got(tiny_checkpoint, tmp_path):
    """Rank 0 (which made the files) is killed: torchrun stops rank 1, which records its own
    stop and, after LOST_AFTER seconds, rank 0 as failed with the iterations its rows hold."""
    (tmp_path / "Eplot.npy").write_bytes(b"earlier results")
    job = torchrun(tiny_checkpoint, tmp_path, "--size", str(LONG_RUN))
    meta = wait_for(lambda: ranks_running(tmp_path))
    killed = time.monotonic()
    os.kill(meta["ranks"][0]["pid"], signal.SIGKILL)
    status, _, _ = finished(job, 60)
    assert status != 0 and time.monotonic() - killed < LOST_AFTER + 30
    assert (tmp_path / "Eplot.npy").read_bytes() == b"earlier results"
    meta = json.loads((tmp_path / "Eplot.partial.json").read_text())
    err = np.load(tmp_path / "Eplot.partial.npy")
    assert meta["status"] == "failed" and "rank 0: the rank ended without a word" in meta["error"]
    assert [rank["status"] for rank in meta["ranks"]] == ["failed", "interrupted"]
    for rank in meta["ranks"]:
        (batch,) = rank["batches"]
        steps = batch["iterations_completed"] * meta["model"]["n_layer"]
        assert steps > 0
        for prompt in batch["prompts"]:
            if rank["status"] == "interrupted":  # a graceful stop writes every iteration it completed
                assert np.isnan(err[prompt, steps:]).all()
            assert np.isfinite(err[prompt, :steps]).all()
    assert meta["iterations_completed"] == min(rank["batches"][0]["iterations_completed"] for rank in meta["ranks"])


@pytest.mark.parametrize("whom", ["a rank", "the launcher"])
def test_ctrl_c_stops_every_rank_and_keeps_what_they_computed(tiny_checkpoint, tmp_path, whom):
    """SIGINT to one rank stops the others within seconds (they watch the records), as
    Ctrl-C on torchrun does (it passes SIGINT to every rank): the files move into place,
    "interrupted", NaN after each rank's last iteration."""
    job = torchrun(tiny_checkpoint, tmp_path, "--size", str(LONG_RUN), "--matrixerror", "m", prompts=PROMPTS[:3])
    meta = wait_for(lambda: ranks_running(tmp_path))
    os.kill(meta["ranks"][1]["pid"] if whom == "a rank" else job.pid, signal.SIGINT)
    stopped = time.monotonic()
    status, _, err = finished(job, 60)
    assert status != 0 and time.monotonic() - stopped < 15, err
    meta = json.loads((tmp_path / "Eplot.json").read_text())
    assert meta["status"] == "interrupted" and [rank["status"] for rank in meta["ranks"]] == ["interrupted"] * 2
    values, gram = np.load(tmp_path / "Eplot.npy"), np.load(tmp_path / "m.npy", mmap_mode="r")
    for rank in meta["ranks"]:
        steps = rank["batches"][0]["iterations_completed"] * meta["model"]["n_layer"]
        for prompt in rank["prompts"]:
            assert np.isfinite(values[prompt, :steps]).all() and np.isnan(values[prompt, steps:]).all()
            assert np.isfinite(gram[prompt, 0, 0, steps - 1]) and np.isnan(gram[prompt, 0, 0, steps])


@pytest.mark.parametrize("flags,message", [
    (["--size", "0"], "gpt2fast: error: --size must be at least 1, got 0"),
    (["--size", "abc"], "gpt2fast: error: argument --size: invalid int value: 'abc'"),
    (["--top-k", "0"], "gpt2fast: error: --top-k must be in [1, 50257], got 0")])
def test_bad_input_under_torchrun_is_one_line_from_rank_0(tiny_checkpoint, tmp_path, flags, message):
    status, _, err = finished(torchrun(tiny_checkpoint, tmp_path, *flags))
    assert status != 0
    assert [line for line in err.splitlines() if "gpt2fast: error:" in line] == [message]
    assert list(tmp_path.iterdir()) == []


def test_world_size_without_torchrun_is_one_line(tiny_checkpoint, tmp_path):
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", CUDA_VISIBLE_DEVICES="")
    env.pop("MASTER_ADDR", None)
    run = subprocess.run([sys.executable, "-m", "gpt2fast", "--weights", str(tiny_checkpoint), "--prompt", "x",
                          "--size", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert run.stderr.startswith("gpt2fast: error: WORLD_SIZE is 2, but this process is not part of a torchrun job")


def test_results_in_memory_are_refused_under_torchrun():
    common = dict(noff=False, random_init=False, const_reset=False, progress=True, second_signal_exits=False,
                  model=None, backend="torch", on_decode=None, size=1, seed=0, decode=(), device="cpu",
                  dtype="fp32", memory_budget=None, distributed=True)
    with pytest.raises(InputError, match="under torchrun every rank writes its rows of the files: give savefile$"):
        check_consensus_arguments(parameter, matrix=False, savefile=None, matrixerror=None, **common)
    with pytest.raises(InputError, match="give savefile and matrixerror$"):
        check_consensus_arguments(parameter, matrix=True, savefile="E", matrixerror=None, **common)
    with pytest.raises(InputError, match="plan describes a run of one process: run it without torchrun"):
        check_consensus_arguments(parameter, matrix=False, savefile="E", matrixerror=None, plan=True, **common)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 1024), min_size=0, max_size=300), st.integers(1, 9))
def test_shards_cover_every_prompt_once_and_balance_tokens(lengths, world_size):
    shares = shard_by_tokens(lengths, world_size)
    assert len(shares) == world_size and sorted(i for share in shares for i in share) == list(range(len(lengths)))
    assert all(share == sorted(share) for share in shares)
    loads = [sum(lengths[i] for i in share) for share in shares]
    if lengths:  # longest-first greedy: no rank exceeds the mean by more than one prompt
        assert max(loads) <= sum(lengths) / world_size + max(lengths)
        assert balance(lengths, shares) == max(loads) / (sum(lengths) / world_size)


def test_many_prompts_balance_within_five_percent():
    lengths = [int(n) for n in np.random.default_rng(0).integers(5, 512, size=256)]
    for world_size in (2, 4, 8):
        assert balance(lengths, shard_by_tokens(lengths, world_size)) <= 1.05


def test_generation_shares_prompts_and_prints_what_one_process_prints(tiny_checkpoint, tmp_path):
    flags = ["--use-model", "9", "--seed", "5"]
    status, out, err = finished(torchrun(tiny_checkpoint, tmp_path, *flags, prompts=PROMPTS[:5]))
    assert status == 0, err
    single = subprocess.run([sys.executable, "-m", "gpt2fast", "--weights", str(tiny_checkpoint), "--backend",
                             "torch", *[part for text in PROMPTS[:5] for part in ("--prompt", text)], *flags],
                            capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert single.returncode == 0, single.stderr
    assert out == single.stdout and out.count("\n> ") + out.startswith("> ") == 5


def test_a_generating_rank_stopped_stops_the_others(tiny_checkpoint, tmp_path):
    """SIGTERM to rank 1 while both generate long texts: rank 0 stops within seconds too
    (the job's store carries the stop), and rank 0 prints what both grew."""
    job = torchrun(tiny_checkpoint, tmp_path, "--use-model", "1024", "--size", "40", prompts=PROMPTS[:4])
    pids = wait_for(lambda: rank_pids(job.pid, 2))
    time.sleep(3)
    os.kill(pids[1], signal.SIGTERM)
    stopped = time.monotonic()
    status, out, err = finished(job, 120)
    assert time.monotonic() - stopped < 30, err
    assert status != 0 and out.count("> ") >= 2


def rank_pids(launcher: int, ranks: int) -> list[int] | None:
    """The ranks' pids (children of torchrun's launcher, in rank order), once all started."""
    children = subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True).stdout.split()
    pids = []
    for child in map(int, children):
        try:
            environ = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        rank = next((int(item.split(b"=")[1]) for item in environ if item.startswith(b"RANK=")), None)
        if rank is not None:
            pids.append((rank, child))
    return [pid for _, pid in sorted(pids)] if len(pids) == ranks else None
