"""The Triton backend: the torch backend's iteration with every operation a fused kernel.

Per block (M = P·T rows, all prompts at once):
    qkv    = ln_linear(x, ln_1, c_attn)                  [M, 3C]
    att    = causal_attention(qkv, lengths)              [P, T, C]
    x      = linear_residual(att, attn.c_proj, x)        in place
    hidden = ln_linear(x, ln_2, c_fc, gelu)              [M, 4C]   (skipped with --noff)
    x      = linear_residual(hidden, mlp.c_proj, x)      in place
    metric = consensus_metric(x, ln_f, lengths)          err, G into the driver's slot
Under ``--const-reset`` the Linear weights of every step after the first are generated
inside the GEMM kernels from the counter-based stream (``weight_stream``), never stored.
"""

from __future__ import annotations

import torch

from ..kernels.attention import causal_attention
from ..kernels.consensus_metric import consensus_metric
from ..kernels.embedding import embed
from ..kernels.linear import linear_residual, ln_linear
from ..kernels.lm_head import lm_head_argmax
from ..model import BlockParams, layer_norm
from ..philox import mix_key
from ..weight_stream import DRAW_DOMAIN, WTE_STREAM, WeightStream, linear_stream
from ..weights import LINEAR_NAMES
from .torch_backend import CapturedIteration, capture_in_place, pad_prompts

class TritonEngine:
    """All prompts' hidden states x [P, T, C] float32 and the kernels that move them.

    Same interface as ``TorchEngine``; ``precision`` is ``"ieee"`` (faithful fp32) or
    ``"tf32"``.
    """

    backend = "triton"

    def __init__(self, stream: WeightStream, token_lists: list[list[int]], noff: bool,
                 precision: str = "ieee"):
        if stream.wte.dtype != torch.float32:
            raise ValueError("the Triton backend computes in float32 (fp32 or tf32)")
        self.stream = stream
        self.noff = noff
        self.precision = precision
        cfg = stream.cfg
        self.n_layer, self.n_head, width = cfg.n_layer, cfg.n_head, cfg.n_embd
        self.tokens, self.lengths = pad_prompts(token_lists, stream.wte.device)
        rows = self.tokens.numel()
        device = stream.wte.device
        self.x = torch.empty(self.n_prompts, self.length, width, device=device)
        embed(self.tokens, stream.wte, stream.wpe, self.x)
        self.qkv = torch.empty(rows, 3 * width, device=device)
        self.attended = torch.empty(self.n_prompts, self.length, width, device=device)
        self.hidden = torch.empty(rows, 4 * width, device=device)
        self.key = mix_key(stream.seed, DRAW_DOMAIN)

    @property
    def n_prompts(self) -> int:
        return self.tokens.shape[0]

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def _linears(self, step: int) -> tuple[BlockParams, dict[str, tuple[int, int, int] | None]]:
        """The block of step ``step`` and, per Linear, the in-kernel draw (key, stream, draw)
        that replaces its stored weight under --const-reset (None: use the stored one)."""
        layer = step % self.n_layer
        draw = self.stream.draw_of(step)
        if draw is None or draw == 0:
            return self.stream.block(step), dict.fromkeys(LINEAR_NAMES)
        drawn = {name: (self.key, linear_stream(layer, name), draw) for name in LINEAR_NAMES}
        return self.stream.loaded[layer], drawn

    def _block(self, step: int) -> None:
        p, drawn = self._linears(step)
        x = self.x.view(-1, self.x.shape[-1])
        precision = self.precision

        def weights(weight, bias, name):
            return (None, None) if drawn[name] is not None else (weight, bias)

        w, b = weights(p.attn_w, p.attn_b, "attn.c_attn")
        ln_linear(x, p.ln_1_w, p.ln_1_b, w, b, self.qkv, precision=precision, drawn=drawn["attn.c_attn"])
        causal_attention(self.qkv.view(self.n_prompts, self.length, -1), self.lengths, self.attended,
                         n_head=self.n_head, precision=precision)
        w, b = weights(p.attn_proj_w, p.attn_proj_b, "attn.c_proj")
        linear_residual(self.attended.view(x.shape), w, b, x, x, precision=precision,
                        drawn=drawn["attn.c_proj"])
        if self.noff:
            return
        w, b = weights(p.fc_w, p.fc_b, "mlp.c_fc")
        ln_linear(x, p.ln_2_w, p.ln_2_b, w, b, self.hidden, gelu=True, precision=precision,
                  drawn=drawn["mlp.c_fc"])
        w, b = weights(p.fc_proj_w, p.fc_proj_b, "mlp.c_proj")
        linear_residual(self.hidden, w, b, x, x, precision=precision, drawn=drawn["mlp.c_proj"])

    @torch.no_grad()
    def iteration(self, index: int, err_out: torch.Tensor, gram_out: torch.Tensor | None) -> None:
        """Apply blocks 0..L-1 once and write the metrics after each (see TorchEngine)."""
        for layer in range(self.n_layer):
            self._block(index * self.n_layer + layer)
            consensus_metric(self.x, self.stream.ln_f_w, self.stream.ln_f_b, self.lengths,
                             err_out[:, layer], None if gram_out is None else gram_out[:, layer],
                             precision=self.precision)

    @torch.no_grad()
    def decode(self, index: int) -> torch.Tensor:
        """Argmax token [P, T] int64 (CPU) of ``lm_head(ln_f(x))`` after iteration ``index``."""
        last_step = index * self.n_layer + self.n_layer - 1
        draw = self.stream.draw_of(last_step + 1)
        y = layer_norm(self.x, self.stream.ln_f_w, self.stream.ln_f_b).reshape(-1, self.x.shape[-1])
        ids = torch.empty(y.shape[0], dtype=torch.int64, device=y.device)
        if draw is None or draw == 0:
            lm_head_argmax(y.contiguous(), self.stream.lm_head_after(last_step), ids, precision=self.precision)
        else:
            lm_head_argmax(y.contiguous(), self.stream.wte, ids, precision=self.precision,
                           drawn=(self.key, WTE_STREAM, draw))
        return ids.view(self.n_prompts, self.length).cpu()

    @torch.no_grad()
    def capture_iteration(self, with_gram: bool) -> CapturedIteration | None:
        """A CUDA graph of one iteration (see TorchEngine.capture_iteration)."""
        if self.x.device.type != "cuda" or self.stream.const_reset:
            return None
        return capture_in_place(self, with_gram)
