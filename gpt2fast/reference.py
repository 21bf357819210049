"""The original script's semantics in plain PyTorch, one prompt at a time.

This is the oracle the tests compare the engine against and the baseline the benchmarks
time. It follows ``GPT-2-Consensus.py``: an ``nn.Module`` GPT-2, the N-iteration loop over
the blocks with the metrics computed row by row after every block, decode logits after
chosen iterations, and generation that recomputes the whole sequence for every new token.
Only the original's bugs are fixed (see SPEC.md), and its redraws come from the same
seeded stream as the engine's (``weight_stream``), so both see the same numbers.
Never optimise this file.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from .config import ModelConfig
from .weight_stream import WTE_STREAM, drawn_tensor, linear_stream
from .weights import LINEAR_NAMES


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        head_dim = width // self.n_head
        q = q.view(batch, length, self.n_head, head_dim).transpose(1, 2)
        k = k.view(batch, length, self.n_head, head_dim).transpose(1, 2)
        v = v.view(batch, length, self.n_head, head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(batch, length, width)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, noff: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        if not noff:
            x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """GPT-2 with ``lm_head`` tied to ``wte``; parameters named as the canonical state dict.

    After ``redraw(seed, d)`` the Linear weights are those of redraw d and ``lm_head`` uses
    redraw d's ``wte`` (made when needed: the embedding itself is never used again).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.current_draw: tuple[int, int] | None = None
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)

    def lm_head(self, y: torch.Tensor) -> torch.Tensor:
        weight = self.wte.weight
        if self.current_draw is not None:
            seed, draw = self.current_draw
            weight = drawn_tensor(seed, draw, WTE_STREAM, tuple(weight.shape), weight.device)
        return y @ weight.T

    @torch.no_grad()
    def redraw(self, seed: int, draw: int) -> None:
        """Every Linear weight from redraw ``draw`` and Linear biases 0 (in place)."""
        for layer, block in enumerate(self.h):
            for name in LINEAR_NAMES:
                linear = block.get_submodule(name)
                stream = linear_stream(layer, name)
                shape = tuple(linear.weight.shape)
                linear.weight.copy_(drawn_tensor(seed, draw, stream, shape, linear.weight.device))
                linear.bias.zero_()
        self.current_draw = (seed, draw)


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> GPT:
    """A float32 ``GPT`` on ``device`` holding the canonical state dict ``state``."""
    model = GPT(cfg)
    model.load_state_dict(state)
    return model.to(device).eval()


@torch.no_grad()
def forward(
    model: GPT,
    idx: torch.Tensor,
    *,
    iterations: int,
    noff: bool,
    random_init: bool,
    const_reset: bool,
    seed: int,
    decode_iterations: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, list[int]]]:
    """The original's ``GPT.forward`` for one prompt idx [1, T] int64.

    Returns logits [1, T, V] after the last step, err [L·N, 2], err2 [T, T, L·N] (float32)
    and, for each decode iteration i, the argmax token ids of ``lm_head(ln_f(x))`` at every
    position after iteration i.
    """
    length = idx.size(1)
    x = model.wte(idx) + model.wpe(torch.arange(length, device=idx.device))
    if random_init:
        model.redraw(seed, 0)
    steps = model.cfg.n_layer * iterations
    err = torch.zeros(steps, 2)
    err2 = torch.zeros(length, length, steps)
    decoded = {}
    u = 0
    for i in range(iterations):
        for block in model.h:
            x = block(x, noff=noff)
            if const_reset:
                model.redraw(seed, u + 1)
            y = model.ln_f(x)[0]
            rows = torch.div(y, torch.norm(y, dim=1).unsqueeze(1))
            first = torch.abs((y[0, :] / torch.norm(y[0, :])) @ rows.T)
            gram = rows @ rows.T
            err2[:, :, u] = gram
            err[u, 0] = torch.mean(first)
            err[u, 1] = torch.mean(gram)
            u += 1
        if i in decode_iterations:
            decoded[i] = model.lm_head(model.ln_f(x))[0].argmax(dim=-1).tolist()
    logits = model.lm_head(model.ln_f(x))
    return logits, err, err2, decoded


def consensus(
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    tokens: list[int],
    *,
    iterations: int,
    noff: bool = False,
    random_init: bool = False,
    const_reset: bool = False,
    seed: int = 0,
    decode_iterations: tuple[int, ...] = (),
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, dict[int, list[int]]]:
    """One prompt's consensus run on ``device``: err [L·N, 2], err2 [T, T, L·N] (CPU) and
    the decoded ids."""
    _, err, err2, decoded = forward(
        build_model(cfg, state, device), torch.tensor([tokens], dtype=torch.long, device=device),
        iterations=iterations,
        noff=noff, random_init=random_init, const_reset=const_reset, seed=seed,
        decode_iterations=decode_iterations,
    )
    return err, err2, decoded


@torch.no_grad()
def generate(
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    tokens: list[int],
    *,
    max_length: int,
    iterations: int = 1,
    noff: bool = False,
    random_init: bool = False,
    const_reset: bool = False,
    seed: int = 0,
    top_k: int = 10,
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
) -> list[int]:
    """Grow ``tokens`` to ``max_length`` as the original: the full forward pass (metrics
    included) over the whole sequence per new token, top-k sampling from the last position.

    Returns the first ``max_length`` token ids. Sampling draws from a CPU generator seeded
    with ``seed``; every pass starts from the loaded weights (SPEC §5.1) and takes its
    redraws from the seeded stream, so each pass sees the same weights.
    """
    generator = torch.Generator().manual_seed(seed)
    x_tokens = torch.tensor([tokens], dtype=torch.long, device=device)
    while x_tokens.size(1) < max_length:
        logits, _, _, _ = forward(
            build_model(cfg, state, device), x_tokens, iterations=iterations, noff=noff,
            random_init=random_init, const_reset=const_reset, seed=seed,
        )
        probs = F.softmax(logits[:, -1, :] / temperature, dim=-1)
        topk_probs, topk_indices = torch.topk(probs, top_k, dim=-1)
        choice = torch.multinomial(topk_probs.cpu(), 1, generator=generator).to(device)
        x_tokens = torch.cat((x_tokens, torch.gather(topk_indices, -1, choice)), dim=1)
    return x_tokens[0, :max_length].tolist()
