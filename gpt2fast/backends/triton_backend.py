"""The Triton backend: the torch backend's iteration with every operation a fused kernel.

Per block, on rows x [M, C] (all prompts at once, M = P·T; or generation's new rows):
    qkv    = ln_linear(x, ln_1, c_attn)                  [M, 3C]
    att    = attention(qkv)                              [M, C]  causal, or over a cache
    x      = linear_residual(att, attn.c_proj, x)        in place
    hidden = ln_linear(x, ln_2, c_fc, gelu)              [M, 4C]  (skipped with --noff)
    x      = linear_residual(hidden, mlp.c_proj, x)      in place
and after each block of a consensus iteration consensus_metric(x, ln_f) writes err and G
into the driver's slot. Under ``--const-reset`` the Linear weights of every step after the
first are generated inside the GEMM kernels from the counter-based stream
(``weight_stream``), never stored.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from ..kernels.attention import causal_attention, decode_attention
from ..kernels.consensus_metric import consensus_metric
from ..kernels.embedding import embed
from ..kernels.linear import Step, StepInMemory, linear_residual, ln_linear
from ..kernels.lm_head import lm_head_argmax, lm_head_logits
from ..model import BlockParams, layer_norm
from ..philox import mix_key
from ..weight_stream import DRAW_DOMAIN, WTE_STREAM, WeightStream, linear_stream
from ..weights import LINEAR_NAMES
from .torch_backend import MIN_GRAPH_REPLAYS, CapturedIteration, capture_in_place, pad_prompts

Drawn = tuple[int, int, Step] | None


def step_weights(stream: WeightStream, key: int, step: int) -> tuple[BlockParams, dict[str, Drawn]]:
    """The block of step ``step`` and, per Linear, the in-kernel draw (key, stream, draw)
    that replaces its stored weight under --const-reset (None: use the stored one)."""
    draw = stream.draw_of(step)
    if draw is None or draw == 0:
        return stream.block(step), dict.fromkeys(LINEAR_NAMES)
    return in_kernel_draws(stream, key, step % stream.cfg.n_layer, draw)


def replayed_step_weights(stream: WeightStream, key: int, iteration: torch.Tensor,
                          layer: int) -> tuple[BlockParams, dict[str, Drawn]]:
    """``step_weights`` of block ``layer`` in an iteration >= 1 under --const-reset, whose
    index the GEMM kernels read from ``iteration`` (int64 [1] on the device) when they run:
    every Linear drawn at step iteration · L + layer."""
    if not stream.const_reset:
        raise ValueError("an iteration index read at run time is for --const-reset runs only")
    return in_kernel_draws(stream, key, layer, StepInMemory(iteration, stream.cfg.n_layer, layer))


def in_kernel_draws(stream: WeightStream, key: int, layer: int, draw: Step) -> tuple[BlockParams, dict[str, Drawn]]:
    """Block ``layer`` with every Linear drawn in-kernel at ``draw`` (its LayerNorms loaded)."""
    return stream.loaded[layer], {name: (key, linear_stream(layer, name), draw) for name in LINEAR_NAMES}


def head_draw(stream: WeightStream, key: int, step: int) -> tuple[torch.Tensor, Drawn]:
    """``lm_head`` right after step ``step``: its stored weight, or its in-kernel draw."""
    draw = stream.draw_of(step + 1)
    if draw is None or draw == 0:
        return stream.lm_head_after(step), None
    return stream.wte, (key, WTE_STREAM, draw)


def apply_block(
    x: torch.Tensor,
    p: BlockParams,
    drawn: dict[str, Drawn],
    attend: Callable[[torch.Tensor, torch.Tensor], None],
    qkv: torch.Tensor,
    attended: torch.Tensor,
    hidden: torch.Tensor,
    noff: bool,
    precision: str,
) -> None:
    """One block on rows x [M, C] (float32 or bfloat16), in place. attend(qkv [M, 3C], out [M, C]) is the
    attention; qkv, attended [M, C] and hidden [M, 4C] are scratch buffers."""

    def stored(weight: torch.Tensor, bias: torch.Tensor, name: str) -> tuple:
        return (None, None) if drawn[name] is not None else (weight, bias)

    ln_linear(x, p.ln_1_w, p.ln_1_b, *stored(p.attn_w, p.attn_b, "attn.c_attn"), qkv,
              precision=precision, drawn=drawn["attn.c_attn"])
    attend(qkv, attended)
    linear_residual(attended, *stored(p.attn_proj_w, p.attn_proj_b, "attn.c_proj"), x, x,
                    precision=precision, drawn=drawn["attn.c_proj"])
    if noff:
        return
    ln_linear(x, p.ln_2_w, p.ln_2_b, *stored(p.fc_w, p.fc_b, "mlp.c_fc"), hidden, gelu=True,
              precision=precision, drawn=drawn["mlp.c_fc"])
    linear_residual(hidden, *stored(p.fc_proj_w, p.fc_proj_b, "mlp.c_proj"), x, x,
                    precision=precision, drawn=drawn["mlp.c_proj"])


def check_dtype(stream: WeightStream) -> torch.dtype:
    """The dtype of the stream's weights, which the Triton backend's activations share."""
    if stream.wte.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"the Triton backend runs float32 or bfloat16 weights, not {stream.wte.dtype}")
    return stream.wte.dtype


class TritonEngine:
    """All prompts' hidden states x [P, T, C] (the weights' dtype, float32 or bfloat16) and
    the kernels that move them.

    Same interface as ``TorchEngine``; ``precision`` is one of ``dot_precision.PRECISIONS``
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
        rows = self.tokens.numel()
        device = stream.wte.device
        self.x = torch.empty(self.n_prompts, self.length, width, dtype=dtype, device=device)
        embed(self.tokens, stream.wte, stream.wpe, self.x)
        self.qkv = torch.empty(rows, 3 * width, dtype=dtype, device=device)
        self.attended = torch.empty(rows, width, dtype=dtype, device=device)
        self.hidden = torch.empty(rows, 4 * width, dtype=dtype, device=device)
        self.key = mix_key(stream.seed, DRAW_DOMAIN)

    def _attend(self, qkv: torch.Tensor, out: torch.Tensor) -> None:
        shape = (self.n_prompts, self.length, -1)
        causal_attention(qkv.view(shape), self.lengths, out.view(shape), n_head=self.n_head,
                         precision=self.precision)

    @torch.no_grad()
    def iteration(self, index: int | torch.Tensor, err_out: torch.Tensor, gram_out: torch.Tensor | None) -> None:
        """Apply blocks 0..L-1 once and write the metrics after each (see TorchEngine).

        ``index`` may be an int64 [1] tensor on x's device holding an iteration >= 1 of a
        --const-reset run, read by the kernels when they run (``capture_iteration``). The
        metric kernel writes on x's device: slots elsewhere (the driver's host slots on the
        callable path) are filled from device buffers once per iteration."""
        if err_out.device != self.x.device:
            err = torch.empty(err_out.shape, device=self.x.device)
            gram = None if gram_out is None else torch.empty(gram_out.shape, device=self.x.device)
            self.iteration(index, err, gram)
            err_out.copy_(err)
            if gram_out is not None:
                gram_out.copy_(gram)
            return
        rows = self.x.view(-1, self.x.shape[-1])
        for layer in range(self.n_layer):
            if isinstance(index, torch.Tensor):
                p, drawn = replayed_step_weights(self.stream, self.key, index, layer)
            else:
                p, drawn = step_weights(self.stream, self.key, index * self.n_layer + layer)
            apply_block(rows, p, drawn, self._attend, self.qkv, self.attended, self.hidden,
                        self.noff, self.precision)
            consensus_metric(self.x, self.stream.ln_f_w, self.stream.ln_f_b, self.lengths,
                             err_out[:, layer], None if gram_out is None else gram_out[:, layer],
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
        like = {"dtype": self.dtype, "device": device}
        self.cache_k = torch.empty(shape, **like)
        self.cache_v = torch.empty(shape, **like)
        self.qkv = torch.empty(capacity, 3 * cfg.n_embd, **like)
        self.attended = torch.empty(capacity, cfg.n_embd, **like)
        self.hidden = torch.empty(capacity, 4 * cfg.n_embd, **like)

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
        for step in range(self.steps):
            p, drawn = step_weights(stream, self.key, step)
            apply_block(x.view(rows, -1), p, drawn, partial(self._attend, step, start), self.qkv[:rows],
                        self.attended[:rows], self.hidden[:rows], self.noff, self.precision)
        wte, drawn = head_draw(stream, self.key, self.steps - 1)
        last = layer_norm(x[0, -1], stream.ln_f_w, stream.ln_f_b).contiguous()
        logits = torch.empty(wte.shape[0], device=device)
        lm_head_logits(last, wte, logits, precision=self.precision, drawn=drawn)
        return logits
