"""GPT-2 maths in plain PyTorch on batches of right-padded prompts.

Shapes: P prompts, T positions (the longest prompt; shorter ones are right-padded, which is
exact under causal attention because a real position never attends to a later one), C width,
H heads of size D = C / H. All functions are pure: weights come in, activations come out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LAYERNORM_EPS = 1e-5


@dataclass(frozen=True)
class BlockParams:
    """One block's tensors, Linear weights in ``[out, in]`` layout, all on one device/dtype.

    ln_1_w/ln_1_b, ln_2_w/ln_2_b: [C]; attn_w [3C, C], attn_b [3C]; attn_proj_w [C, C],
    attn_proj_b [C]; fc_w [4C, C], fc_b [4C]; fc_proj_w [C, 4C], fc_proj_b [C].
    """

    ln_1_w: torch.Tensor
    ln_1_b: torch.Tensor
    attn_w: torch.Tensor
    attn_b: torch.Tensor
    attn_proj_w: torch.Tensor
    attn_proj_b: torch.Tensor
    ln_2_w: torch.Tensor
    ln_2_b: torch.Tensor
    fc_w: torch.Tensor
    fc_b: torch.Tensor
    fc_proj_w: torch.Tensor
    fc_proj_b: torch.Tensor


def block_params_from_state(state: dict[str, torch.Tensor], layer: int) -> BlockParams:
    """Gather block ``layer`` from a canonical state dict (see ``weights``)."""
    p = f"h.{layer}."
    return BlockParams(
        ln_1_w=state[p + "ln_1.weight"], ln_1_b=state[p + "ln_1.bias"],
        attn_w=state[p + "attn.c_attn.weight"], attn_b=state[p + "attn.c_attn.bias"],
        attn_proj_w=state[p + "attn.c_proj.weight"], attn_proj_b=state[p + "attn.c_proj.bias"],
        ln_2_w=state[p + "ln_2.weight"], ln_2_b=state[p + "ln_2.bias"],
        fc_w=state[p + "mlp.c_fc.weight"], fc_b=state[p + "mlp.c_fc.bias"],
        fc_proj_w=state[p + "mlp.c_proj.weight"], fc_proj_b=state[p + "mlp.c_proj.bias"],
    )


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis with GPT-2's eps (1e-5)."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, LAYERNORM_EPS)


def embed(
    tokens: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, start: int = 0
) -> torch.Tensor:
    """``wte[tokens] + wpe[start : start + T]``: tokens [P, T] int64 -> [P, T, C]."""
    positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
    return wte[tokens] + wpe[positions]


def split_heads(qkv: torch.Tensor, n_head: int) -> tuple[torch.Tensor, ...]:
    """[P, T, 3C] -> q, k, v each [P, H, T, D]."""
    batch, length, three_c = qkv.shape
    head_dim = three_c // (3 * n_head)
    q, k, v = qkv.view(batch, length, 3, n_head, head_dim).permute(2, 0, 3, 1, 4)
    return q, k, v


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """[P, H, T, D] -> [P, T, C]."""
    batch, n_head, length, head_dim = y.shape
    return y.transpose(1, 2).reshape(batch, length, n_head * head_dim)


class DenseLinears:
    """The three Linear forms of a block, on stored ``[out, in]`` weights: ``F.linear``.

    ``backends.cpu_packed.PackedLinears`` (oneDNN) and ``backends.cpu_packed.PanelLinears``
    (the few-row AVX-512 kernel) are the same interface on prepacked CPU weights.
    """

    @staticmethod
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")

    @staticmethod
    def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual + F.linear(x, weight, bias)


DENSE = DenseLinears()


def attention_inputs(x: torch.Tensor, p: BlockParams, ops=DENSE) -> torch.Tensor:
    """``c_attn(ln_1(x))``: rows [..., C] -> [..., 3C] (q, k, v side by side)."""
    return ops.linear(layer_norm(x, p.ln_1_w, p.ln_1_b), p.attn_w, p.attn_b)


def causal_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(D) + causal mask) v per head: [P, T, 3C] -> [P, T, C]."""
    q, k, v = split_heads(qkv, n_head)
    return merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))


def finish_block(x: torch.Tensor, attended: torch.Tensor, p: BlockParams, noff: bool, ops=DENSE) -> torch.Tensor:
    """The rest of a block after attention: the two residual updates, rows [..., C] -> [..., C].

    attended [..., C] is the attention output (heads merged), row for row with x. ``noff``
    skips the MLP half (ln_2 included), as the original's ``--noff``: otherwise
    x + c_proj(gelu_tanh(c_fc(ln_2(x)))). ops: how the Linears are computed
    (``DenseLinears`` interface).
    """
    x = ops.linear_add(attended, p.attn_proj_w, p.attn_proj_b, x)
    if not noff:
        hidden = ops.linear_gelu(layer_norm(x, p.ln_2_w, p.ln_2_b), p.fc_w, p.fc_b)
        x = ops.linear_add(hidden, p.fc_proj_w, p.fc_proj_b, x)
    return x


def block(x: torch.Tensor, p: BlockParams, n_head: int, noff: bool, ops=DENSE, rows=None) -> torch.Tensor:
    """One pre-LayerNorm block with causal attention: [P, T, C] -> [P, T, C], or, with
    ``rows`` (a ``ragged.RaggedRows``), the real rows [R, C] -> [R, C] of ragged prompts."""
    qkv = attention_inputs(x, p, ops)
    if rows is None:
        return finish_block(x, causal_attention(qkv, n_head), p, noff, ops)
    return finish_block(x, rows.unpad(causal_attention(rows.pad(qkv), n_head)), p, noff, ops)


def cached_block(
    x: torch.Tensor,
    p: BlockParams,
    n_head: int,
    noff: bool,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    start: int,
    ops=DENSE,
) -> torch.Tensor:
    """``block`` for rows at positions ``start..start+T-1`` that also attend to a key/value cache.

    x [1, T, C]; cache_k, cache_v [1, H, capacity, D] hold positions ``0..start-1`` and get
    this call's keys and values written at ``start..start+T-1``. Either ``start == 0`` (the
    prompt: causal among the new rows) or ``T == 1`` (one new token: it sees everything).
    ops: how the Linears are computed (``DenseLinears`` interface).
    """
    length = x.shape[1]
    if start != 0 and length != 1:
        raise ValueError("cached_block takes a whole prompt at start 0 or one token after it")
    q, k, v = split_heads(attention_inputs(x, p, ops), n_head)
    end = start + length
    cache_k[:, :, start:end] = k
    cache_v[:, :, start:end] = v
    attended = F.scaled_dot_product_attention(
        q, cache_k[:, :, :end], cache_v[:, :, :end], is_causal=start == 0
    )
    return finish_block(x, merge_heads(attended), p, noff, ops)
