"""fill_counter_normal against its PyTorch reference, and compiled for sm_80 / sm_90.

Interpreter isolation. Triton reads TRITON_INTERPRET when a function is decorated, and
``triton.language`` decorates its own helpers (``tl.philox`` ...) when triton is first
imported; a compiled-mode @jit function cannot be called from interpreted code. So the
interpreter must be on before triton is imported, for the whole process, while the AOT
tests need the same kernels in compiled mode. Any earlier test may already have imported
triton in this pytest process, so no in-process setting is reliable: the interpreter run
happens in a child Python (this file run as a script with TRITON_INTERPRET=1 in its
environment from the start), which saves its outputs for the tests here to compare.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

from aot import compile_for
from gpt2fast.kernels.counter_normal import (
    BLOCK,
    NUM_WARPS,
    counter_normal_reference,
    counter_words,
    fill_counter_normal,
    fill_counter_normal_kernel,
)
from gpt2fast.philox import MASK32, philox4x32

REPO = Path(__file__).resolve().parents[2]
NUMELS = (1, 7, 27, 64, 130, 4099)
KEY_STREAM_STEP = ((5, 0, 0), (2**63 + 12345, 2**32 - 1, 2**33 + 5), (0x299F31D0A4093822, 7, 2**64 - 1))
WORD_GROUPS = 1000
WORDS_BLOCK = 256
FILL_SIGNATURE = {"out_ptr": "*fp32", "key": "u64", "stream": "u32", "step": "u64", "numel": "i64",
                  "BLOCK": "constexpr"}


@triton.jit
def counter_words_kernel(out_ptr, key, stream, step, groups, BLOCK: tl.constexpr):
    """out[w, g] = word w of counter_words(key, stream, step, g), g < groups; out: *i64 [4, groups]."""
    group = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = group < groups
    r0, r1, r2, r3 = counter_words(key, stream, step, group)
    tl.store(out_ptr + group, r0.to(tl.int64), mask=mask)
    tl.store(out_ptr + groups + group, r1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 2 * groups + group, r2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 3 * groups + group, r3.to(tl.int64), mask=mask)


def run_interpreted(path: str) -> None:
    """Child process: launch the kernels under the interpreter and torch.save the outputs."""
    from triton.runtime.interpreter import InterpretedFunction

    results = {"interpreted": isinstance(fill_counter_normal_kernel, InterpretedFunction)}
    for key, stream, step in KEY_STREAM_STEP:
        for numel in NUMELS:
            out = torch.full((numel,), float("nan"))
            fill_counter_normal(out, key, stream, step)
            results[key, stream, step, numel] = out
        words = torch.full((4, WORD_GROUPS), -1, dtype=torch.int64)
        grid = (triton.cdiv(WORD_GROUPS, WORDS_BLOCK),)
        counter_words_kernel[grid](words, key, stream, step, WORD_GROUPS, BLOCK=WORDS_BLOCK)
        results["words", key, stream, step] = words
    torch.save(results, path)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Outputs of run_interpreted, produced by a child process with TRITON_INTERPRET=1."""
    path = tmp_path_factory.mktemp("interpreter") / "outputs.pt"
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": python_path}
    child = subprocess.run([sys.executable, __file__, str(path)], env=env, capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr
    return torch.load(path)


def test_child_ran_the_interpreter(interpreted):
    assert interpreted["interpreted"] is True


@pytest.mark.parametrize("key, stream, step", KEY_STREAM_STEP)
def test_counter_words_bit_exact(interpreted, key, stream, step):
    expected = philox4x32(key, torch.arange(WORD_GROUPS), stream, step & MASK32, step >> 32)
    assert torch.equal(interpreted["words", key, stream, step], torch.stack(expected))


@pytest.mark.parametrize("numel", NUMELS)
@pytest.mark.parametrize("key, stream, step", KEY_STREAM_STEP)
def test_fill_matches_reference(interpreted, key, stream, step, numel):
    out = interpreted[key, stream, step, numel]
    assert not out.isnan().any()
    torch.testing.assert_close(out, counter_normal_reference(key, stream, step, numel), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "out, key, stream, step",
    [
        (torch.empty(8, dtype=torch.float64), 0, 0, 0),
        (torch.empty(4, 2), 0, 0, 0),
        (torch.empty(16)[::2], 0, 0, 0),
        (torch.empty(8), 2**64, 0, 0),
        (torch.empty(8), 0, 2**32, 0),
        (torch.empty(8), 0, 0, -1),
    ],
)
def test_fill_rejects_bad_arguments(out, key, stream, step):
    with pytest.raises(ValueError):
        fill_counter_normal(out, key, stream, step)


def test_fill_of_nothing_launches_nothing():
    out = torch.empty(0)
    assert fill_counter_normal(out, 1, 2, 3) is out


@pytest.mark.parametrize("capability", [80, 90])
def test_fill_kernel_compiles_ahead_of_time(capability):
    kernel = compile_for(fill_counter_normal_kernel, FILL_SIGNATURE, {"BLOCK": BLOCK}, capability,
                         num_warps=NUM_WARPS)
    print(f"\nfill_counter_normal_kernel sm_{capability}: {kernel.n_regs} registers, "
          f"{kernel.spill_store_bytes} B spill stores, {kernel.spill_load_bytes} B spill loads, "
          f"{kernel.stack_bytes} B stack, cubin {len(kernel.cubin)} B")
    assert kernel.cubin[:4] == b"\x7fELF"
    assert kernel.compiled.metadata.name == "fill_counter_normal_kernel"
    assert 0 < kernel.n_regs <= 255
    assert kernel.spill_store_bytes == 0 and kernel.spill_load_bytes == 0


if __name__ == "__main__":
    run_interpreted(sys.argv[1])
