"""Which weights each block application uses: the loaded ones or a seeded redraw.

The original redrew every Linear weight and both embeddings from N(0, 0.02²) (biases 0,
LayerNorms untouched) once after the embedding (``--random-init``) and/or after every block
application (``--const-reset``). Here a redraw is a pure function of (seed, draw index,
tensor, element) through the counter-based generator of ``philox``, so nothing is stored
and every backend can regenerate the same numbers:

    draw index of step u  =  u  if const_reset and u > 0
                             0  if random_init (and not the case above)
                             none (the loaded weights) otherwise

The weights "after step u" (what ``lm_head`` uses when decoding after step u) are those of
step u + 1, because the original redrew right after each block.

The Triton kernels draw redrawn weights themselves: ``step_weights`` and ``head_draw``
resolve a step to the stored weights or an ``InKernelDraw`` (key, tensor stream, draw index,
the index possibly read from device memory at run time: ``StepInMemory``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .config import ModelConfig
from .model import BlockParams, block_params_from_state
from .philox import counter_normal, mix_key
from .weights import INIT_STD, LINEAR_NAMES, linear_shapes

DRAW_DOMAIN = 0x6770_7432  # separates weight draws from any other use of the seed
WTE_STREAM = 0xFFFF_FFFF


def draw_index(step: int, random_init: bool, const_reset: bool) -> int | None:
    """The redraw whose weights step ``step`` uses, or None for the loaded weights."""
    if const_reset and step > 0:
        return step
    if random_init:
        return 0
    return None


def linear_stream(layer: int, name: str) -> int:
    """Generator stream of Linear ``name`` (one of ``LINEAR_NAMES``) in block ``layer``."""
    return layer * len(LINEAR_NAMES) + LINEAR_NAMES.index(name)


def drawn_tensor(seed: int, draw: int, stream: int, shape: tuple[int, ...], device) -> torch.Tensor:
    """N(0, 0.02²) float32 tensor of ``shape``, element e = 0.02 · counter_normal(e)."""
    numel = 1
    for size in shape:
        numel *= size
    values = counter_normal(mix_key(seed, DRAW_DOMAIN), stream, draw, numel, device=device)
    return values.mul_(INIT_STD).view(shape)


def drawn_block(
    cfg: ModelConfig, loaded: BlockParams, seed: int, draw: int, layer: int
) -> BlockParams:
    """Block ``layer`` of redraw ``draw``: fresh Linear weights, zero biases, loaded LayerNorms."""
    device, dtype = loaded.attn_w.device, loaded.attn_w.dtype
    shapes = linear_shapes(cfg)

    def weight(name: str) -> torch.Tensor:
        return drawn_tensor(seed, draw, linear_stream(layer, name), shapes[name], device).to(dtype)

    def zeros(name: str) -> torch.Tensor:
        return torch.zeros(shapes[name][0], device=device, dtype=dtype)

    return BlockParams(
        ln_1_w=loaded.ln_1_w, ln_1_b=loaded.ln_1_b,
        attn_w=weight("attn.c_attn"), attn_b=zeros("attn.c_attn"),
        attn_proj_w=weight("attn.c_proj"), attn_proj_b=zeros("attn.c_proj"),
        ln_2_w=loaded.ln_2_w, ln_2_b=loaded.ln_2_b,
        fc_w=weight("mlp.c_fc"), fc_b=zeros("mlp.c_fc"),
        fc_proj_w=weight("mlp.c_proj"), fc_proj_b=zeros("mlp.c_proj"),
    )


class WeightStream:
    """The block parameters of every step and the ``lm_head`` after it, for one run.

    Loaded weights are moved to ``device``/``dtype`` once; the ``--random-init`` draw is
    made once and kept; ``--const-reset`` draws are made when asked for and not kept.
    owned: the tensors of ``state`` become the stream's (its run loaded them for itself): it
    empties ``state``, so that it holds the only references, and may hand its block weights
    over for good (``give_block``) to be repacked in place.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        state: dict[str, torch.Tensor],
        *,
        seed: int,
        random_init: bool,
        const_reset: bool,
        device: torch.device,
        dtype: torch.dtype,
        owned: bool = False,
    ):
        self.cfg = cfg
        self.seed = seed
        self.random_init = random_init
        self.const_reset = const_reset
        self.owned = owned
        on_device = {name: t.to(device=device, dtype=dtype) for name, t in state.items()}
        if owned:
            state.clear()
        self.wte = on_device["wte.weight"]
        self.wpe = on_device["wpe.weight"]
        self.ln_f_w = on_device["ln_f.weight"]
        self.ln_f_b = on_device["ln_f.bias"]
        self.loaded: list[BlockParams | None] = [block_params_from_state(on_device, layer)
                                                 for layer in range(cfg.n_layer)]
        self._kept_blocks: dict[int, BlockParams] = {}
        self._kept_wte: tuple[int, torch.Tensor] | None = None

    def draw_of(self, step: int) -> int | None:
        return draw_index(step, self.random_init, self.const_reset)

    def block(self, step: int) -> BlockParams:
        """Parameters of the block applied at step ``step`` (layer ``step % L``)."""
        layer = step % self.cfg.n_layer
        loaded = self.loaded[layer]
        if loaded is None:
            raise RuntimeError(f"the weights of block {layer} were handed over (WeightStream.give_block)")
        draw = self.draw_of(step)
        if draw is None:
            return loaded
        if draw == 0:
            if layer not in self._kept_blocks:
                self._kept_blocks[layer] = drawn_block(self.cfg, loaded, self.seed, 0, layer)
            return self._kept_blocks[layer]
        return drawn_block(self.cfg, loaded, self.seed, draw, layer)

    @property
    def owns_blocks(self) -> bool:
        """Whether the block weights of every iteration are the stream's alone, to hand over:
        loaded weights it owns, or its kept ``--random-init`` redraw (not under --const-reset,
        whose weights change every step)."""
        return not self.const_reset and (self.owned or self.random_init)

    def give_block(self, layer: int) -> BlockParams:
        """The parameters of block ``layer`` at every iteration, handed over for good (only
        where ``owns_blocks``): the stream drops its references to them, and to the loaded
        weights a redraw replaced, so the caller may repack them in place; ``block`` refuses
        that layer from then on."""
        if not self.owns_blocks:
            raise RuntimeError("give_block: the stream does not own its block weights")
        params = self.block(layer)
        self._kept_blocks.pop(layer, None)
        self.loaded[layer] = None
        return params

    def lm_head_after(self, step: int) -> torch.Tensor:
        """The ``lm_head`` weight [V, C] (tied to ``wte``) in effect right after step ``step``."""
        draw = self.draw_of(step + 1)
        if draw is None:
            return self.wte
        if self._kept_wte is None or self._kept_wte[0] != draw:
            wte = drawn_tensor(self.seed, draw, WTE_STREAM, tuple(self.wte.shape), self.wte.device)
            self._kept_wte = (draw, wte.to(self.wte.dtype))
        return self._kept_wte[1]


@dataclass(frozen=True)
class StepInMemory:
    """A draw the kernel reads when it runs: iteration[0] · per_iteration + offset.

    iteration: int64 [1] on the kernel's device, rewritten between replays of a CUDA graph
    (``gpt2fast.driver``'s iteration pointer), so that one captured iteration draws the
    weights of whichever iteration it replays.
    """

    iteration: torch.Tensor
    per_iteration: int
    offset: int


Step = int | StepInMemory


class InKernelDraw(NamedTuple):
    """A redraw a kernel generates instead of reading a stored weight: the weight stream's
    key (the seed mixed with DRAW_DOMAIN), the tensor's stream (``linear_stream``,
    WTE_STREAM) and the draw index ``step``."""

    key: int
    stream: int
    step: Step


def step_weights(stream: WeightStream, key: int, step: int) -> tuple[BlockParams, dict[str, InKernelDraw | None]]:
    """What the Triton kernels apply at step ``step``: the block and, per Linear, the
    in-kernel draw that replaces its stored weight under --const-reset (None: the stored one)."""
    draw = stream.draw_of(step)
    if draw is None or draw == 0:
        return stream.block(step), dict.fromkeys(LINEAR_NAMES)
    return in_kernel_draws(stream, key, step % stream.cfg.n_layer, draw)


def replayed_step_weights(stream: WeightStream, key: int, iteration: torch.Tensor,
                          layer: int) -> tuple[BlockParams, dict[str, InKernelDraw | None]]:
    """``step_weights`` of block ``layer`` in an iteration >= 1 under --const-reset, whose
    index the GEMM kernels read from ``iteration`` (int64 [1] on the device) when they run:
    every Linear drawn at step iteration · L + layer."""
    if not stream.const_reset:
        raise ValueError("an iteration index read at run time is for --const-reset runs only")
    return in_kernel_draws(stream, key, layer, StepInMemory(iteration, stream.cfg.n_layer, layer))


def in_kernel_draws(stream: WeightStream, key: int, layer: int,
                    draw: Step) -> tuple[BlockParams, dict[str, InKernelDraw | None]]:
    """Block ``layer`` with every Linear drawn in-kernel at ``draw`` (its LayerNorms loaded)."""
    draws = {name: InKernelDraw(key, linear_stream(layer, name), draw) for name in LINEAR_NAMES}
    return stream.loaded[layer], draws


def head_draw(stream: WeightStream, key: int, step: int) -> tuple[torch.Tensor, InKernelDraw | None]:
    """``lm_head`` right after step ``step``: its stored weight, or its in-kernel draw."""
    draw = stream.draw_of(step + 1)
    if draw is None or draw == 0:
        return stream.lm_head_after(step), None
    return stream.wte, InKernelDraw(key, WTE_STREAM, draw)
