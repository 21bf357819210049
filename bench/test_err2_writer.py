"""err2 at the disk's speed: the C++ writer against large sequential writes of the same bytes.

Writer cases (T = 256, N = 2048 and T = 1024, N = 128 in one chunk; T = 128, N = 8192 through
a 128 MiB staging, 16 chunks; L = 2: 1 GiB of err2 each): the driver runs an engine whose
iteration only fills its staging rows (a tiny model's iteration costs a few ms at these T;
this one costs none, so the time is the writer's: the transposes, the writes, the final
fsync). The baseline writes the same byte count
in 2 MiB blocks to the same directory and fsyncs, right before each writer round. The
summary line gives both in MB/s, the writer's share of the sequential speed (the median
over the pairs; target >= 0.70) and the peak resident memory the writer added.

Whole-run case: the tiny model, one prompt of 511 tokens, N = 512 (err2 1.07 GB), through
the CLI, with and without --matrixerror (target: with at most 2x without, ratio >= 0.5).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from gpt2fast.driver import drive

# (T, N, staging bytes): the first two fit the default staging (one chunk, whole rows); the
# third is larger than its staging, as a long run is (gpt2-xl, T = 512, N = 2000: ~100 GB
# through 2 GiB): 16 chunks of 512 iterations, each adding a 4 KiB run to every row.
WRITER_CASES = [(256, 2048, 2 << 30), (1024, 128, 2 << 30), (128, 8192, 128 << 20)]
LAYERS = 2


class FillingEngine:
    """One prompt of ``length`` tokens whose every iteration writes constants into its rows."""

    backend = "synthetic"

    def __init__(self, length: int):
        self.n_prompts, self.n_layer, self.length = 1, LAYERS, length

    def iteration(self, index: int, err: torch.Tensor, gram: torch.Tensor | None) -> None:
        err.fill_(index)
        if gram is not None:
            gram.fill_(index * 1e-3)

    def capture_iteration(self, wants_gram: bool, n_iterations: int) -> None:
        return None


def sequential_write(path, nbytes: int) -> None:
    block = np.full(2 << 20, np.nan, np.float32).tobytes()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < nbytes:
            written += os.write(fd, block[: min(len(block), nbytes - written)])
        os.fsync(fd)
    finally:
        os.close(fd)


def resident_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) * 1024


def reset_peak_resident() -> int:
    """Start a new peak (Linux: 5 > clear_refs resets VmHWM to VmRSS); returns VmRSS."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return resident_bytes("VmRSS")


@pytest.mark.parametrize("length,iterations,staging", WRITER_CASES)
def test_err2_writer(benchmark, tmp_path, length, iterations, staging):
    """Each timed writer round follows an untimed-by-the-benchmark sequential write of the
    same bytes (pedantic's setup, timed here): pairs adjacent in time, so a disk whose speed
    drifts over a session (this VM's does, by 2x) is compared with itself."""
    nbytes = 4 * length * length * LAYERS * iterations
    benchmark.group = (f"err2 writer: T={length}, N={iterations}, L={LAYERS} ({nbytes / 2**30:.2f} GiB, staging "
                       f"{staging >> 20} MiB)")
    sequential = []

    def setup() -> None:
        started = time.perf_counter()
        sequential_write(tmp_path / "seq.bin", nbytes)
        sequential.append(time.perf_counter() - started)
        (tmp_path / "seq.bin").unlink()
        (tmp_path / "g.npy").unlink(missing_ok=True)

    before = reset_peak_resident()
    benchmark.pedantic(lambda: drive(FillingEngine(length), iterations, tmp_path / "e.npy", tmp_path / "g.npy",
                                     staging=staging), setup=setup, rounds=8, warmup_rounds=0)
    shares = sorted(seq / writer for seq, writer in zip(sequential, benchmark.stats.stats.data, strict=True))
    share = float(np.median(shares))
    grown = (resident_bytes("VmHWM") - before) / 2**20
    benchmark.extra_info.update(share_of_sequential=share, sequential_s=sequential)
    benchmark.extra_info["summary"] = (
        f"{benchmark.group}: writer {nbytes / benchmark.stats.stats.median / 1e6:.0f} MB/s, sequential writes "
        f"{nbytes / sorted(sequential)[len(sequential) // 2] / 1e6:.0f} MB/s, median share of the paired "
        f"sequential time {share:.2f} (pairs {', '.join(f'{x:.2f}' for x in shares)}; target >= 0.70), "
        f"peak +{grown:.0f} MiB")


@pytest.mark.parametrize("role", ["baseline", "gpt2fast"])
def test_whole_run_with_err2(benchmark, tiny_checkpoint_dir, tmp_path, role):
    prompt = " ".join(["word"] * 511)
    flags = ["--weights", str(tiny_checkpoint_dir), "--backend", "torch", "--size", "512", "--prompt", prompt]
    if role == "gpt2fast":
        flags += ["--matrixerror", "m"]
    benchmark.group = "whole run: tiny model, T=511, N=512, without / with --matrixerror (1.07 GB)"
    benchmark.extra_info["role"] = role
    walls = []

    def run() -> None:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gpt2fast", *flags], check=True, cwd=tmp_path,
                       stdin=subprocess.DEVNULL, capture_output=True)
        walls.append(time.perf_counter() - started)
        (tmp_path / "m.npy").unlink(missing_ok=True)

    benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    benchmark.extra_info["summary"] = (f"{benchmark.group}: {'without' if role == 'baseline' else 'with'} "
                                       f"{min(walls):.1f} s")


@pytest.fixture(scope="module")
def tiny_checkpoint_dir(tmp_path_factory):
    from tiny_models import tiny_config, tiny_state, write_hf_safetensors

    directory = tmp_path_factory.mktemp("tiny")
    write_hf_safetensors(directory, tiny_config(), tiny_state(tiny_config(), 7))
    return directory
