"""Data-parallel runs: ``torchrun`` with one rank per device against one process, 64 prompts.

The baseline is the same job in one process (``python -m gpt2fast``); gpt2fast is
``torchrun --standalone --nproc-per-node R`` (R = the GPUs, or 2 CPU ranks of one thread
each against one process of every thread). Both are whole processes, start-up included.
The summary line gives the distributed overhead, 1 - (slowest rank's run time) / (job's
wall time): set-up (process start, process group, checks, weights, files) and the meeting
at the end, as a share of the job; and the shard balance, the largest rank's tokens over
the mean (target <= 1.05). Model: gpt2 on the CPU, gpt2-xl on GPUs, random weights;
``GPT2FAST_BENCH_ITERATIONS`` sets N (default 2 on the CPU, 200 on GPUs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

ON_GPU = torch.cuda.is_available()
RANKS = torch.cuda.device_count() if ON_GPU else 2
MODEL = "gpt2-xl" if ON_GPU else "gpt2"
ITERATIONS = int(os.environ.get("GPT2FAST_BENCH_ITERATIONS", "200" if ON_GPU else "2"))
WORDS = ["the", "light", "of", "a", "river", "moves", "slowly", "under", "old", "bridges", "and", "stone"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    """64 prompts of 8 to 64 words (random, fixed seed)."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("".join(" ".join(rng.choice(WORDS, size=rng.integers(8, 65))) + "\n" for _ in range(64)))
    return path


def command(launcher: list[str], prompts_file, savefile: str) -> list[str]:
    return [*launcher, "-m", "gpt2fast", "--model", MODEL, "--weights", "random", "--size", str(ITERATIONS),
            "--prompts-file", str(prompts_file), "--savefile", savefile]


@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_distributed_64_prompts(benchmark, prompts_file, tmp_path, role):
    if RANKS < 2:
        pytest.skip("needs two devices (or the CPU)")
    launcher = [sys.executable] if role == "baseline" else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}"]
    walls = []

    def run() -> None:
        started = time.perf_counter()
        subprocess.run(command(launcher, prompts_file, str(tmp_path / "E")), check=True, cwd=tmp_path,
                       stdin=subprocess.DEVNULL, capture_output=True)
        walls.append(time.perf_counter() - started)

    benchmark.group = f"distributed: {MODEL}, 64 prompts, N={ITERATIONS}, {RANKS} ranks"
    benchmark.extra_info["role"] = role
    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    meta = json.loads((tmp_path / "E.json").read_text())
    slowest = max(rank["timings"]["run_s"] for rank in meta["ranks"])
    tokens = [rank["tokens"] for rank in meta["ranks"]]
    overhead = 1 - slowest / walls[-1]
    benchmark.extra_info.update(overhead=overhead, balance=max(tokens) / (sum(tokens) / len(tokens)))
    benchmark.extra_info["summary"] = (
        f"{benchmark.group}, {role}: {walls[-1]:.1f} s, set-up and meeting {overhead:.0%} of it"
        + (f"; shard balance {benchmark.extra_info['balance']:.3f} (tokens {tokens})" if role == "gpt2fast" else ""))
