"""The memory floor of a consensus run (``memory.consensus_memory``) and the refusal it drives."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import gpt2fast
from gpt2fast import validation
from gpt2fast.errors import InputError
from gpt2fast.memory import STAGING_BYTES
from gpt2fast.memory import consensus_memory, staging_budget
from gpt2fast.weights import parameter_count
from tiny_models import tiny_config

CFG = tiny_config()  # L = 2, C = 128
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_floor_counts_each_part_where_it_lives():
    lengths = [3, 5]  # rows 8, P 2, T 5
    activations = 4 * 8 * 6 * 128
    per_iteration, per_iteration_gram = 4 * 2 * 2 * 2, 4 * 2 * 2 * (2 + 25)
    assert consensus_memory(CFG, lengths, 1000, False, "torch", CPU, 4) == {"host": activations + 1000 * per_iteration}
    staging = 100 * per_iteration  # two slots of 50 iterations
    assert consensus_memory(CFG, lengths, 1000, False, "torch", CPU, 4, staging) == {"host": activations + staging}
    gram = 2 * 25
    assert consensus_memory(CFG, lengths, 1000, True, "torch", CPU, 4) == {
        "host": activations + 4 * gram + 1000 * per_iteration_gram}
    states = 2 * 2 * 5 * 128
    assert consensus_memory(CFG, lengths, 1000, True, "triton", CUDA, 2) == {
        "host": 1000 * per_iteration_gram, "device": 2 * 8 * 6 * 128 + 4 * gram + 2 * states + 4 * 2 * gram}


def test_staging_takes_at_most_half_a_memory_budget():
    assert staging_budget(64 << 20) == 32 << 20
    assert staging_budget() <= STAGING_BYTES and staging_budget(1 << 50) == staging_budget()


MEASURE = textwrap.dedent("""
    import functools, resource, sys
    import gpt2fast
    from gpt2fast.api import load_weights
    run = sys.modules["gpt2fast.consensus_run"]  # slots handed over when full only: the 5 s flush
    run.drive = functools.partial(run.drive, flush_seconds=1e9)  # would leave a slow run's half-touched
    weights, _ = load_weights(sys.argv[1], None, 0)
    gpt2fast.consensus([[1, 2]], weights=load_weights(sys.argv[1], None, 0)[0], size=1, progress=False)
    resident = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    gpt2fast.consensus([[5] * 128] * 4, weights=weights, size=600, matrixerror="M", progress=False)
    # VmHWM: this process image's peak (ru_maxrss would carry the forking parent's over exec)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(peak * 1024 - resident)
""")


def test_the_floor_is_below_what_a_run_takes_and_near_it(tiny_checkpoint, tmp_path):
    """4 prompts of 128 tokens with err2 for 600 iterations on the CPU (two full staging
    slots of 128 MiB): the peak resident memory above what the process held before the run
    is at least the floor (a refused run could not have run) and within 2x of it."""
    grown = int(subprocess.run([sys.executable, "-c", MEASURE, str(tiny_checkpoint)], check=True, cwd=tmp_path,
                               capture_output=True, text=True).stdout)
    floor = consensus_memory(CFG, [128] * 4, 600, True, "torch", CPU, 4)["host"]
    assert floor <= grown <= 2 * floor, (floor, grown)


def test_a_prompt_beyond_the_free_memory_is_refused_before_loading(tiny_checkpoint, tmp_path, monkeypatch):
    """More prompts than fit run in batches (tests/test_batches.py); one prompt that does not
    fit alone is refused before any weight is read or any file written."""
    weights = 4 * parameter_count(CFG)
    alone = consensus_memory(CFG, [1024], 1, True, "torch", CPU, 4)["host"]
    monkeypatch.setattr(validation, "available_memory", lambda device: weights + alone - 1)
    with pytest.raises(InputError, match=r"one prompt of 1024 tokens needs at least .* of host memory on this model"):
        gpt2fast.consensus([[5] * 1024] * 2, weights=tiny_checkpoint, size=1, matrixerror="M", progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(validation, "available_memory", lambda device: weights + alone)
    assert gpt2fast.consensus([[5] * 1024] * 2, weights=tiny_checkpoint, size=1, matrixerror="M",
                              progress=False).err.shape == (2, 2, 2)


def test_host_memory_counts_the_page_cache_that_can_be_dropped():
    """MemAvailable, not free pages only: a machine whose RAM holds file pages still has it."""
    import os

    from gpt2fast.memory import available_memory

    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    assert available_memory(CPU) >= free_pages - (64 << 20)
    assert abs(available_memory(CPU) - int(meminfo["MemAvailable"].split()[0]) * 1024) < 256 << 20


def test_an_address_space_limit_bounds_the_free_memory():
    """Under ``ulimit -v`` the memory a process may still map is what counts."""
    import subprocess
    import sys

    probe = ("import resource, torch; from gpt2fast.memory import available_memory; "
             "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.RLIM_INFINITY)); "
             "print(available_memory(torch.device('cpu')))")
    limited = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert 0 <= limited < 6 << 30
