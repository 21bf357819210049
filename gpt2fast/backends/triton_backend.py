"""The Triton backend: the torch backend's iteration with every operation a fused kernel.

Per block, on rows x_in [M, C] (all prompts at once, M = P·T; or generation's new rows) into
x_out (x_in itself in generation; the next layer's slot of ``TritonEngine.states``):
    qkv    = linear(LN_1(x_in), c_attn)                  [M, 3C]
    att    = attention(qkv)                              [M, C]  causal, or over a cache
    mid    = x_in + linear(att, attn.c_proj)             [M, C]  (x_out with --noff)
    hidden = gelu(linear(LN_2(mid), c_fc))               [M, 4C] (skipped with --noff)
    x_out  = mid + linear(hidden, mlp.c_proj)
Stored weights run ``skinny_linear`` (tensor cores, split K reduced in the kernel, LayerNorm
statistics handed from each residual GEMM to the next LN: five launches per block); the
Linears of a --const-reset step, whose weights are generated inside the GEMM from the
counter-based stream (``weight_stream``) and never stored, run ``ln_linear`` /
``linear_residual``. A consensus iteration keeps every block's output and then computes the
metric of all L layers at once (``consensus_metric`` on [L, P, T, C]) into the driver's slot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from ..kernels.attention import causal_attention, decode_attention
from ..kernels.checks import STORAGE_DTYPES
from ..kernels.consensus_metric import consensus_metric
from ..kernels.embedding import embed
from ..kernels.linear import linear_residual, ln_linear
from ..kernels.skinny_linear import layer_norm_stats, skinny_linear, stats_shape, ticket_count
from ..kernels.lm_head import lm_head_argmax, lm_head_logits
from ..model import BlockParams, layer_norm
from ..philox import mix_key
from ..weight_stream import DRAW_DOMAIN, InKernelDraw, WeightStream, head_draw, replayed_step_weights, step_weights
from .engine import MIN_GRAPH_REPLAYS, CapturedIteration, capture_in_place, pad_prompts

# Stored weights through skinny_linear (False: through ln_linear / linear_residual, the fused
# FMA-path kernels the engine used before; a switch for A/B measurements, bench/gpu_profile.py)
SKINNY_GEMMS = True


@dataclass
class BlockBuffers:
    """The scratch of ``apply_block`` for M rows of width C: qkv [M, 3C], attended and mid
    [M, C], hidden [M, 4C] (x's dtype); the LayerNorm statistics (``stats_shape(M, C)``,
    fp32) of the block's input (``stats_in``, valid when ``stats_valid``) and of mid; and the
    split-K tickets, int32 zeros that every skinny GEMM leaves at zero."""

    qkv: torch.Tensor
    attended: torch.Tensor
    mid: torch.Tensor
    hidden: torch.Tensor
    stats_in: torch.Tensor
    stats_mid: torch.Tensor
    tickets: torch.Tensor
    stats_valid: bool = False

    @classmethod
    def allocate(cls, rows: int, width: int, dtype: torch.dtype, device: torch.device) -> BlockBuffers:
        like = {"dtype": dtype, "device": device}
        return cls(
            qkv=torch.empty(rows, 3 * width, **like), attended=torch.empty(rows, width, **like),
            mid=torch.empty(rows, width, **like), hidden=torch.empty(rows, 4 * width, **like),
            stats_in=torch.empty(stats_shape(rows, width), dtype=torch.float32, device=device),
            stats_mid=torch.empty(stats_shape(rows, width), dtype=torch.float32, device=device),
            tickets=torch.zeros(ticket_count(rows, 4 * width), dtype=torch.int32, device=device))


def apply_block(
    x_in: torch.Tensor,
    x_out: torch.Tensor,
    p: BlockParams,
    drawn: dict[str, InKernelDraw | None],
    attend: Callable[[torch.Tensor, torch.Tensor], None],
    buffers: BlockBuffers,
    noff: bool,
    precision: str,
) -> None:
    """One block on rows x_in [M, C] (float32 or bfloat16) into x_out [M, C] (x_in itself, or
    not overlapping it). attend(qkv [M, 3C], out [M, C]) is the attention. A block whose
    Linears are all stored runs skinny_linear, which needs ``buffers.stats_in`` to describe
    x_in (computed here unless ``buffers.stats_valid``) and leaves x_out's there."""
    skinny = SKINNY_GEMMS and all(draw is None for draw in drawn.values())
    if skinny and not buffers.stats_valid:
        layer_norm_stats(x_in, buffers.stats_in)

    def linear(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, *,
               ln: tuple | None = None, gelu: bool = False, residual: torch.Tensor | None = None,
               stats: torch.Tensor | None = None) -> None:
        """out = act(LN(x) · weightᵀ + bias) (+ residual), LN = (γ, β, statistics of x) or none."""
        if skinny:
            ln_w, ln_b, ln_stats = ln if ln is not None else (None, None, None)
            skinny_linear(x, weight, bias, out, gelu=gelu, residual=residual, precision=precision,
                          counters=buffers.tickets, ln_w=ln_w, ln_b=ln_b, ln_stats=ln_stats, stats=stats)
            return
        stored = (weight, bias) if drawn[name] is None else (None, None)
        if residual is not None:
            linear_residual(x, *stored, residual, out, precision=precision, drawn=drawn[name])
        else:
            ln_linear(x, ln[0], ln[1], *stored, out, gelu=gelu, precision=precision, drawn=drawn[name])

    after_attention, after_stats = (x_out, buffers.stats_in) if noff else (buffers.mid, buffers.stats_mid)
    linear("attn.c_attn", x_in, p.attn_w, p.attn_b, buffers.qkv, ln=(p.ln_1_w, p.ln_1_b, buffers.stats_in))
    attend(buffers.qkv, buffers.attended)
    linear("attn.c_proj", buffers.attended, p.attn_proj_w, p.attn_proj_b, after_attention, residual=x_in,
           stats=after_stats)
    if not noff:
        linear("mlp.c_fc", buffers.mid, p.fc_w, p.fc_b, buffers.hidden, ln=(p.ln_2_w, p.ln_2_b, buffers.stats_mid),
               gelu=True)
        linear("mlp.c_proj", buffers.hidden, p.fc_proj_w, p.fc_proj_b, x_out, residual=buffers.mid,
               stats=buffers.stats_in)
    buffers.stats_valid = skinny


def check_dtype(stream: WeightStream) -> torch.dtype:
    """The dtype of the stream's weights, which the Triton backend's activations share."""
    if stream.wte.dtype not in STORAGE_DTYPES:
        raise ValueError(f"the Triton backend runs float32 or bfloat16 weights, not {stream.wte.dtype}")
    return stream.wte.dtype


class TritonEngine:
    """All prompts' hidden states (the weights' dtype, float32 or bfloat16) and the kernels
    that move them: ``states`` [L, P, T, C] holds each block's output of the last iteration,
    and x = states[L − 1] [P, T, C] is the iteration's input and output.

    Same interface as ``TorchEngine``; ``precision`` is one of ``checks.PRECISIONS``
    (``"ieee"``: faithful fp32).
    """

    backend = "triton"

    def __init__(self, stream: WeightStream, token_lists: list[list[int]], noff: bool,
                 precision: str = "ieee"):
        dtype = check_dtype(stream)
        self.stream = stream
        self.noff = noff
        self.precision = precision
        cfg = stream.cfg
        self.n_layer, self.n_head, width = cfg.n_layer, cfg.n_head, cfg.n_embd
        self.tokens, self.lengths = pad_prompts(token_lists, stream.wte.device)
        self.n_prompts, self.length = self.tokens.shape
        device = stream.wte.device
        self.states = torch.empty(self.n_layer, self.n_prompts, self.length, width, dtype=dtype, device=device)
        self.x = self.states[-1]
        embed(self.tokens, stream.wte, stream.wpe, self.x)
        self.buffers = BlockBuffers.allocate(self.tokens.numel(), width, dtype, device)
        self.key = mix_key(stream.seed, DRAW_DOMAIN)

    def _attend(self, qkv: torch.Tensor, out: torch.Tensor) -> None:
        shape = (self.n_prompts, self.length, -1)
        causal_attention(qkv.view(shape), self.lengths, out.view(shape), n_head=self.n_head,
                         precision=self.precision)

    @torch.no_grad()
    def iteration(self, index: int | torch.Tensor, err_out: torch.Tensor, gram_out: torch.Tensor | None) -> None:
        """Apply blocks 0..L-1 once (block l from states[l − 1] into states[l]; block 0 from
        x = states[L − 1]) and then write the metrics of all L states (see TorchEngine).

        ``index`` may be an int64 [1] tensor on x's device holding an iteration >= 1 of a
        --const-reset run, read by the kernels when they run (``capture_iteration``). The
        metric kernel writes on x's device: slots elsewhere (the driver's host slots on the
        callable path) are filled from device buffers once per iteration."""
        if err_out.device != self.x.device:
            err = torch.empty(err_out.shape, dtype=torch.float32, device=self.x.device)
            gram = None if gram_out is None else torch.empty(gram_out.shape, dtype=torch.float32, device=self.x.device)
            self.iteration(index, err, gram)
            err_out.copy_(err)
            if gram_out is not None:
                gram_out.copy_(gram)
            return
        width = self.x.shape[-1]
        self.buffers.stats_valid = False
        for layer in range(self.n_layer):
            if isinstance(index, torch.Tensor):
                p, drawn = replayed_step_weights(self.stream, self.key, index, layer)
            else:
                p, drawn = step_weights(self.stream, self.key, index * self.n_layer + layer)
            apply_block(self.states[layer - 1].view(-1, width), self.states[layer].view(-1, width), p, drawn,
                        self._attend, self.buffers, self.noff, self.precision)
        consensus_metric(self.states, self.stream.ln_f_w, self.stream.ln_f_b, self.lengths, err_out, gram_out,
                         precision=self.precision)

    @torch.no_grad()
    def decode(self, index: int) -> torch.Tensor:
        """Argmax token [P, T] int64 (CPU) of ``lm_head(ln_f(x))`` after iteration ``index``."""
        wte, drawn = head_draw(self.stream, self.key, index * self.n_layer + self.n_layer - 1)
        y = layer_norm(self.x, self.stream.ln_f_w, self.stream.ln_f_b).reshape(-1, self.x.shape[-1])
        ids = torch.empty(y.shape[0], dtype=torch.int64, device=y.device)
        lm_head_argmax(y.contiguous(), wte, ids, precision=self.precision, drawn=drawn)
        return ids.view(self.n_prompts, self.length).cpu()

    @torch.no_grad()
    def capture_iteration(self, with_gram: bool, n_iterations: int) -> CapturedIteration | None:
        """A CUDA graph of one iteration (see TorchEngine.capture_iteration); None off CUDA
        or where it would replay fewer than MIN_GRAPH_REPLAYS times.

        Under --const-reset the graph stands for iterations 1.. (iteration 0's first block
        uses stored weights, loaded or --random-init's draw 0; every later step a fresh
        draw): its GEMMs read the iteration from a device tensor the driver writes before
        each replay."""
        first_iteration = int(self.stream.const_reset)
        if self.x.device.type != "cuda" or n_iterations - first_iteration < MIN_GRAPH_REPLAYS:
            return None
        if first_iteration == 0:
            return capture_in_place(self, with_gram)
        iteration = torch.ones(1, dtype=torch.int64, device=self.x.device)
        return capture_in_place(self, with_gram, iteration, first_iteration)


class TritonGeneration:
    """Generation's cached forward pass with the Triton kernels: per step u a key and a
    value cache [H, capacity, D]; the prompt runs causal attention, each new token the
    single-query ``decode_attention`` over the cache."""

    def __init__(self, stream: WeightStream, noff: bool, iterations: int, precision: str = "ieee"):
        self.dtype = check_dtype(stream)
        self.stream = stream
        self.noff = noff
        self.precision = precision
        self.steps = iterations * stream.cfg.n_layer
        self.key = mix_key(stream.seed, DRAW_DOMAIN)

    def start(self, capacity: int) -> None:
        cfg, device = self.stream.cfg, self.stream.wte.device
        shape = (self.steps, cfg.n_head, capacity, cfg.head_dim)
        self.cache_k = torch.empty(shape, dtype=self.dtype, device=device)
        self.cache_v = torch.empty(shape, dtype=self.dtype, device=device)

    def _attend(self, step: int, start: int, qkv: torch.Tensor, out: torch.Tensor) -> None:
        """Attention of rows qkv [n, 3C] at positions start.. of step ``step``: store their
        keys and values in the step's cache, then attend causally (the prompt, start 0) or
        from the one new row over the whole cache."""
        cfg = self.stream.cfg
        rows, width = qkv.shape[0], cfg.n_embd
        heads = (rows, cfg.n_head, cfg.head_dim)
        cache_k, cache_v = self.cache_k[step], self.cache_v[step]
        cache_k[:, start : start + rows] = qkv[:, width : 2 * width].view(heads).transpose(0, 1)
        cache_v[:, start : start + rows] = qkv[:, 2 * width :].view(heads).transpose(0, 1)
        if start == 0:
            lengths = torch.tensor([rows], dtype=torch.int64, device=qkv.device)
            causal_attention(qkv.view(1, rows, -1), lengths, out.view(1, rows, -1), n_head=cfg.n_head,
                             precision=self.precision)
        else:
            decode_attention(qkv[0, :width].view(cfg.n_head, cfg.head_dim), cache_k, cache_v, start + 1,
                             out.view(cfg.n_head, cfg.head_dim), precision=self.precision)

    @torch.no_grad()
    def advance(self, ids: list[int], start: int) -> torch.Tensor:
        """Run all steps over ``ids`` at positions start..; logits [V] of the last one."""
        stream, cfg = self.stream, self.stream.cfg
        rows = len(ids)
        if start != 0 and rows != 1:
            raise ValueError("advance takes the whole prompt at start 0 or one token after it")
        device = stream.wte.device
        x = torch.empty(1, rows, cfg.n_embd, dtype=self.dtype, device=device)
        embed(torch.tensor([ids], dtype=torch.int64, device=device), stream.wte, stream.wpe, x, start=start)
        buffers = BlockBuffers.allocate(rows, cfg.n_embd, self.dtype, device)
        for step in range(self.steps):
            p, drawn = step_weights(stream, self.key, step)
            apply_block(x.view(rows, -1), x.view(rows, -1), p, drawn, partial(self._attend, step, start), buffers,
                        self.noff, self.precision)
        wte, drawn = head_draw(stream, self.key, self.steps - 1)
        last = layer_norm(x[0, -1], stream.ln_f_w, stream.ln_f_b).contiguous()
        logits = torch.empty(wte.shape[0], dtype=torch.float32, device=device)
        lm_head_logits(last, wte, logits, precision=self.precision, drawn=drawn)
        return logits
