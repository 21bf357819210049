"""Counter-based N(0, 1) numbers, bit-compatible with Triton's ``tl.philox``.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) maps a
64-bit key and four 32-bit counters to four 32-bit words. Triton's ``tl.philox(seed, c0,
c1, c2, c3)`` uses the key words (k0, k1) = (seed & 0xffffffff, seed >> 32). On top of it:

    counter_normal(key, stream, step)[e] = [n0, n1, n2, n3][e % 4], where
      (r0, r1, r2, r3) = philox4x32_10(key; e // 4, stream, step & 0xffffffff, step >> 32)
      u_i = uint_to_uniform_float(r_i)       (Triton's: ~r if r < 0 as int32, times 4.6566127342e-10)
      (n0, n1) = pair_uniform_to_normal(u0, u1),  (n2, n3) = pair_uniform_to_normal(u2, u3)
      pair_uniform_to_normal(a, b) = sqrt(-2 log max(a, 1e-7)) * (cos 2πb, sin 2πb)

all in float32, for 0 <= e < 2**34. ``gpt2fast.kernels.counter_normal`` computes the same
numbers inside Triton kernels; this module is the PyTorch path (and the kernel's reference).

Here uint32 words live in int64 tensors. A 32x32-bit product may exceed 2**63 and wrap in
int64, but the wrapped value has the same 64 bits, so an arithmetic shift by 32 followed by
a 32-bit mask still gives the high word.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
PHILOX_ROUNDS = 10
PHILOX_KEY_A = 0x9E37_79B9
PHILOX_KEY_B = 0xBB67_AE85
PHILOX_ROUND_A = 0xD251_1F53
PHILOX_ROUND_B = 0xCD9E_8D57
UNIFORM_SCALE = 4.6566127342e-10  # largest s with (2**31 - 1) * s < 1 in float32 (Triton's)
MIN_UNIFORM = 1.0e-7
TWO_PI = 6.283185307179586
MAX_ELEMENTS = 2**34  # e // 4 must fit the 32-bit counter c0
CHUNK_GROUPS = 2**16  # groups of 4 elements per pass: bounded memory, cache-sized buffers


def philox4x32(
    key: int, c0: torch.Tensor | int, c1: torch.Tensor | int, c2: torch.Tensor | int,
    c3: torch.Tensor | int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 of counters (c0, c1, c2, c3) under the 64-bit ``key``.

    Counters are uint32 values held in int64 tensors (or Python ints), broadcast together;
    the result is four int64 tensors of the broadcast shape holding uint32 words, on the
    device of the first tensor counter (CPU if all are ints).
    """
    check_range("key", key, 2**64)
    tensors = [c for c in (c0, c1, c2, c3) if isinstance(c, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    counters = [torch.as_tensor(c, dtype=torch.int64, device=device) for c in (c0, c1, c2, c3)]
    c0, c1, c2, c3 = (c.clone() for c in torch.broadcast_tensors(*counters))
    k0, k1 = key & MASK32, key >> 32
    scratch = torch.empty_like(c0)
    for _ in range(PHILOX_ROUNDS):
        c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1, scratch)
        k0, k1 = (k0 + PHILOX_KEY_A) & MASK32, (k1 + PHILOX_KEY_B) & MASK32
    for word in (c1, c3):
        word.bitwise_and_(MASK32)
    return c0, c1, c2, c3


def _philox_round(c0, c1, c2, c3, k0: int, k1: int, scratch: torch.Tensor):
    """One Philox round, in place on the four int64 word tensors (which it reuses).

    c0' = hi(B·c2) ^ c1 ^ k0,  c1' = lo(B·c2),  c2' = hi(A·c0) ^ c3 ^ k1,  c3' = lo(A·c0).
    c0 and c2 must hold clean uint32 values (they are multiplied); c1 and c3 may carry junk
    above bit 31, which only reaches c0'/c2' through the xor and is masked off there. The
    returned c1'/c3' are the raw 64-bit products, so they carry such junk.
    """
    c1.bitwise_xor_(k0)
    c2.mul_(PHILOX_ROUND_B)
    torch.bitwise_right_shift(c2, 32, out=scratch)
    c1.bitwise_xor_(scratch).bitwise_and_(MASK32)
    c3.bitwise_xor_(k1)
    c0.mul_(PHILOX_ROUND_A)
    torch.bitwise_right_shift(c0, 32, out=scratch)
    c3.bitwise_xor_(scratch).bitwise_and_(MASK32)
    return c1, c2, c3, c0


def uint_to_uniform(word: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float``: int64 tensor of uint32 words -> float32 in [0, 1).

    The word is reinterpreted as int32 x (the int64 -> int32 cast keeps the low 32 bits);
    x < 0 becomes ~x, which is x ^ (x >> 31) with an arithmetic shift; then x * 4.6566127342e-10.
    """
    x = word.to(torch.int32)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 31))
    return x.to(torch.float32).mul_(UNIFORM_SCALE)


def pair_uniform_to_normal_into(
    radius_u: torch.Tensor, angle_u: torch.Tensor, cos_out: torch.Tensor, sin_out: torch.Tensor
) -> None:
    """Triton's ``pair_uniform_to_normal`` (Box-Muller) of float32 uniforms, written to outs.

    cos_out = sqrt(-2 log max(radius_u, 1e-7)) · cos(2π angle_u), sin_out likewise with sin.
    Consumes both inputs (modified in place); outputs may be strided views.
    """
    radius = radius_u.clamp_min_(MIN_UNIFORM).log_().mul_(-2.0).sqrt_()
    angle = angle_u.mul_(TWO_PI)
    torch.cos(angle, out=cos_out)
    cos_out.mul_(radius)
    torch.sin(angle, out=sin_out)
    sin_out.mul_(radius)


def counter_normal(
    key: int, stream: int, step: int, numel: int, device="cpu", dtype=torch.float32
) -> torch.Tensor:
    """Elements 0..numel-1 of the N(0, 1) sequence named by (key, stream, step).

    key < 2**64, stream < 2**32, step < 2**64, numel <= 2**34. Returns a contiguous
    tensor [numel] of ``dtype`` (values computed in float32). Philox runs once per group of
    4 elements, CHUNK_GROUPS groups at a time, so scratch memory stays bounded.
    """
    check_range("key", key, 2**64)
    check_range("stream", stream, 2**32)
    check_range("step", step, 2**64)
    check_range("numel", numel, MAX_ELEMENTS + 1)
    groups = -(-numel // 4)
    out = torch.empty(groups, 4, dtype=torch.float32, device=device)
    for start in range(0, groups, CHUNK_GROUPS):
        stop = min(start + CHUNK_GROUPS, groups)
        group = torch.arange(start, stop, dtype=torch.int64, device=device)
        r0, r1, r2, r3 = philox4x32(key, group, stream, step & MASK32, step >> 32)
        block = out[start:stop]
        pair_uniform_to_normal_into(uint_to_uniform(r0), uint_to_uniform(r1), block[:, 0], block[:, 1])
        pair_uniform_to_normal_into(uint_to_uniform(r2), uint_to_uniform(r3), block[:, 2], block[:, 3])
    return out.view(-1)[:numel].to(dtype)


def splitmix64(x: int) -> int:
    """SplitMix64 output function (Steele, Lea & Flood 2014): a bijection of 64-bit ints."""
    z = (x + 0x9E37_79B9_7F4A_7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & MASK64
    return z ^ (z >> 31)


def mix_key(seed: int, *words: int) -> int:
    """A 64-bit Philox key from the user's seed and extra words (e.g. a purpose tag).

    h = splitmix64(seed), then h = splitmix64(h ^ w) for each word w in order; every
    integer is first reduced modulo 2**64. As splitmix64 is a bijection, changing any
    single word (within 64 bits) changes the key.
    """
    h = splitmix64(seed & MASK64)
    for word in words:
        h = splitmix64(h ^ (word & MASK64))
    return h


def check_range(name: str, value: int, limit: int) -> None:
    """Raise ValueError unless 0 <= value < limit."""
    if not 0 <= value < limit:
        raise ValueError(f"{name} must be in [0, {limit}), got {value}")
