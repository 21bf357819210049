"""Counter-based N(0, 1) numbers generated inside Triton kernels.

For a 64-bit key, a 32-bit stream id, a 64-bit step and element indices e < 2**34:

    (r0, r1, r2, r3) = philox4x32_10(key; e // 4, stream, step & 0xffffffff, step >> 32)
    u_i = uint_to_uniform_float(r_i)                       float32 in [0, 1)
    (n0, n1) = pair_uniform_to_normal(u0, u1)               Box-Muller:
    (n2, n3) = pair_uniform_to_normal(u2, u3)               sqrt(-2 log max(a, 1e-7)) (cos, sin)(2πb)
    value(e) = [n0, n1, n2, n3][e % 4]

with Triton's own ``tl.philox`` (key words (k0, k1) = (key & 0xffffffff, key >> 32)),
``tl.uint_to_uniform_float`` and ``tl.pair_uniform_to_normal``. ``normal_at`` is a
device function for any block of element indices, so a GEMM kernel can regenerate the
weight tile it needs instead of loading it; each element evaluates only the Box-Muller pair
it belongs to. ``fill_counter_normal`` writes elements 0..numel-1 to a float32 vector [numel].
The reference is ``gpt2fast.philox.counter_normal``: raw Philox words agree bit for bit,
the normals to float32 rounding of log/sqrt/cos/sin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..philox import MAX_ELEMENTS, check_range
from ..philox import counter_normal as counter_normal_reference  # noqa: F401  (re-exported)

BLOCK = 256  # with NUM_WARPS = 8, one element per thread: of BLOCK 256-1024 with 2-8 warps, the only
NUM_WARPS = 8  # configuration with no spills in the aligned and unaligned builds on sm_80 and sm_90


@triton.jit
def counter_words(key, stream, step, group):
    """Philox4x32-10 words (4 blocks of uint32) of element groups ``group`` (int block).

    Counters (group, stream, step & 0xffffffff, step >> 32); key, stream and step are
    integer scalars of any width (interpreter and compiler type them differently).
    """
    c0 = group.to(tl.uint32)
    zero = c0 * 0
    step = zero.to(tl.uint64) + step
    c1 = (zero + stream).to(tl.uint32)
    c2 = step.to(tl.uint32)
    c3 = (step >> 32).to(tl.uint32)
    return tl.philox(key, c0, c1, c2, c3)


@triton.jit
def normal_at(key, stream, step, element):
    """N(0, 1) float32 values of the int64 element indices ``element`` (any block shape)."""
    r0, r1, r2, r3 = counter_words(key, stream, step, element >> 2)
    lane = element & 3
    first_pair = lane < 2
    radius_u = tl.uint_to_uniform_float(tl.where(first_pair, r0, r2))
    angle_u = tl.uint_to_uniform_float(tl.where(first_pair, r1, r3))
    n_cos, n_sin = tl.pair_uniform_to_normal(radius_u, angle_u)
    return tl.where((lane & 1) == 0, n_cos, n_sin)


@triton.jit(do_not_specialize=["key", "stream", "step"])
def fill_counter_normal_kernel(out_ptr, key: tl.uint64, stream: tl.uint32, step: tl.uint64,
                               numel: tl.int64, BLOCK: tl.constexpr):
    """out[e] = normal_at(key, stream, step, e) for e < numel; out_ptr: *fp32 [numel]."""
    element = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + element, normal_at(key, stream, step, element), mask=element < numel)


def fill_counter_normal(out: torch.Tensor, key: int, stream: int, step: int) -> torch.Tensor:
    """Fill the contiguous float32 vector ``out`` [numel] in place; returns ``out``.

    key < 2**64, stream < 2**32, step < 2**64, numel <= 2**34 (as the reference).
    """
    if out.dim() != 1 or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 vector, got {out.dtype} {tuple(out.shape)}")
    numel = out.numel()
    check_range("key", key, 2**64)
    check_range("stream", stream, 2**32)
    check_range("step", step, 2**64)
    check_range("numel", numel, MAX_ELEMENTS + 1)
    if numel:
        grid = (triton.cdiv(numel, BLOCK),)
        fill_counter_normal_kernel[grid](out, key, stream, step, numel, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out
