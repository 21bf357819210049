"""Token plus position embedding: the first step of every forward pass.

For P prompts of T positions (right-padded), width C:

    out[p, t, :] = wte[tokens[p, t], :] + wpe[start + t, :]

tokens [P, T] int64, wte [V, C], wpe [n_positions, C] and out [P, T, C] all float32 or all
bfloat16 (the sum is formed in float32 and rounded once, as PyTorch's bf16 add).
``start`` > 0 embeds rows at later positions (generation: one new token at position
``start``). Reference: ``gpt2fast.model.embed``.

Grid: one program per (row p·T + t, block of BLOCK_C columns). Each call moves 3·P·T·C·4
bytes (two reads, one write): at the default workload (27 tokens, C = 768) that is 250 kB,
so on a GPU the kernel is launch-bound. BLOCK_C = 256 tiles C = 768 exactly and C = 1600
with 9% idle lanes. C is a compile-time constant (one compiled kernel per model width).

Token ids: checking ``0 <= id < V`` needs the ids' values on the host, which for CUDA
tensors is a device-to-host sync. So the launcher checks them only for CPU tensors (where
it costs no sync), and on CUDA the kernel itself never reads outside ``wte``: an
out-of-range id gives a row of NaN, which the metrics then show instead of silently using
another token's embedding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import STORAGE_DTYPES, check_one_device

from ..model import embed as embed_reference  # noqa: F401  (re-exported as this kernel's reference)

BLOCK_C = 256  # with NUM_WARPS = 2: four contiguous floats (one 16-byte load) per thread
NUM_WARPS = 2


@triton.jit
def embed_kernel(tokens_ptr, wte_ptr, wpe_ptr, out_ptr, length, start, n_vocab,
                 N_EMBD: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[row, c] = wte[tokens[row], c] + wpe[start + row % length, c], one column block.

    tokens_ptr: *i64 [rows]; wte_ptr: [n_vocab, N_EMBD]; wpe_ptr: [*, N_EMBD];
    out_ptr: [rows, N_EMBD], all *fp32 or all *bf16; program (row, column block).
    """
    row = tl.program_id(0).to(tl.int64)
    column = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_width = column < N_EMBD
    token = tl.load(tokens_ptr + row)
    known_width = tl.where((token >= 0) & (token < n_vocab), N_EMBD, 0)  # wte columns to read
    position = start + row % length
    word = tl.load(wte_ptr + token * N_EMBD + column, mask=column < known_width, other=float("nan"))
    place = tl.load(wpe_ptr + position * N_EMBD + column, mask=in_width)
    total = word.to(tl.float32) + place.to(tl.float32)
    tl.store(out_ptr + row * N_EMBD + column, total.to(out_ptr.dtype.element_ty), mask=in_width)


def embed(tokens: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, out: torch.Tensor,
          *, start: int = 0) -> torch.Tensor:
    """Write ``wte[tokens] + wpe[start : start + T]`` into ``out`` [P, T, C]; returns ``out``.

    tokens [P, T] int64; wte [V, C], wpe [n_positions, C], out [P, T, C] of one dtype in
    ``STORAGE_DTYPES``; all contiguous and on one device; 0 <= start and start + T <= n_positions. Token ids are
    checked to lie in [0, V) only for CPU tensors (see the module docstring).
    """
    if tokens.dim() != 2 or tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be int64 [P, T], got {tokens.dtype} {tuple(tokens.shape)}")
    for name, tensor in (("wte", wte), ("wpe", wpe)):
        if tensor.dim() != 2 or tensor.dtype not in STORAGE_DTYPES:
            raise ValueError(f"{name} must be float32 or bfloat16 [rows, C], got {tensor.dtype} {tuple(tensor.shape)}")
    n_prompts, length = tokens.shape
    n_vocab, n_embd = wte.shape
    if wpe.shape[1] != n_embd or n_embd == 0:
        raise ValueError(f"wte {tuple(wte.shape)} and wpe {tuple(wpe.shape)} need the same width C > 0")
    shape = (n_prompts, length, n_embd)
    if out.shape != shape:
        raise ValueError(f"out must be [P, T, C] = {shape}, got {tuple(out.shape)}")
    if len({wte.dtype, wpe.dtype, out.dtype}) != 1:
        raise ValueError(f"wte, wpe and out must share one dtype, got {wte.dtype}, {wpe.dtype}, {out.dtype}")
    if not all(t.is_contiguous() for t in (tokens, wte, wpe, out)):
        raise ValueError("tokens, wte, wpe and out must be contiguous")
    check_one_device("tokens, wte, wpe and out", tokens, wte, wpe, out)
    if start < 0 or start + length > wpe.shape[0]:
        raise ValueError(f"positions {start}..{start + length - 1} are outside wpe's {wpe.shape[0]} rows")
    if tokens.device.type == "cpu" and tokens.numel() and not (
        0 <= int(tokens.min()) and int(tokens.max()) < n_vocab
    ):
        raise ValueError(f"token ids must be in [0, {n_vocab})")
    if tokens.numel():
        grid = (n_prompts * length, triton.cdiv(n_embd, BLOCK_C))
        embed_kernel[grid](tokens, wte, wpe, out, length, start, n_vocab,
                           N_EMBD=n_embd, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return out
