"""The weights of one model: canonical names and shapes, checking, seeded random initialisation.

The canonical state dict uses Hugging Face's GPT-2 names without a prefix and PyTorch's
``Linear`` layout (``[out_features, in_features]``), all float32 on the CPU:

    wte.weight [V, C]          wpe.weight [n_positions, C]
    h.{l}.ln_1.weight/bias [C]
    h.{l}.attn.c_attn.weight [3C, C]   h.{l}.attn.c_attn.bias [3C]
    h.{l}.attn.c_proj.weight [C, C]    h.{l}.attn.c_proj.bias [C]
    h.{l}.ln_2.weight/bias [C]
    h.{l}.mlp.c_fc.weight [4C, C]      h.{l}.mlp.c_fc.bias [4C]
    h.{l}.mlp.c_proj.weight [C, 4C]    h.{l}.mlp.c_proj.bias [C]
    ln_f.weight/bias [C]

``lm_head`` is tied to ``wte`` and has no entry of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig
from .errors import InputError

INIT_STD = 0.02
LINEAR_NAMES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
LAYERNORM_NAMES = ("ln_1", "ln_2")


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Weight shape ``(out, in)`` of each Linear of a block, by its name in ``LINEAR_NAMES``."""
    c = cfg.n_embd
    return {
        "attn.c_attn": (3 * c, c),
        "attn.c_proj": (c, c),
        "mlp.c_fc": (4 * c, c),
        "mlp.c_proj": (c, 4 * c),
    }


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter name mapped to its shape for a model of sizes ``cfg``."""
    c = cfg.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (cfg.vocab_size, c),
        "wpe.weight": (cfg.n_positions, c),
        "ln_f.weight": (c,),
        "ln_f.bias": (c,),
    }
    for layer in range(cfg.n_layer):
        for ln in LAYERNORM_NAMES:
            shapes[f"h.{layer}.{ln}.weight"] = (c,)
            shapes[f"h.{layer}.{ln}.bias"] = (c,)
        for name, (out_features, in_features) in linear_shapes(cfg).items():
            shapes[f"h.{layer}.{name}.weight"] = (out_features, in_features)
            shapes[f"h.{layer}.{name}.bias"] = (out_features,)
    return shapes


def check_state(state: dict[str, torch.Tensor], cfg: ModelConfig, origin: str) -> None:
    """Raise ``InputError`` unless ``state`` holds exactly the parameters of ``cfg``."""
    shapes = expected_shapes(cfg)
    missing = sorted(set(shapes) - set(state))
    if missing:
        raise InputError(f"{origin}: missing {len(missing)} tensor(s), first {missing[0]!r}")
    unexpected = sorted(set(state) - set(shapes))
    if unexpected:
        raise InputError(f"{origin}: unexpected tensor {unexpected[0]!r} for this model")
    for name, shape in shapes.items():
        if tuple(state[name].shape) != shape:
            raise InputError(
                f"{origin}: {name} has shape {tuple(state[name].shape)}, "
                f"the model needs {shape} (n_layer={cfg.n_layer}, n_embd={cfg.n_embd})"
            )
        if not state[name].is_floating_point():
            raise InputError(f"{origin}: {name} is not a floating-point tensor")


@dataclass(frozen=True)
class Weights:
    """A model's sizes, its canonical float32 state dict, and where it came from.

    source: a human-readable origin (a path, ``hf-cache:...``, ``random(seed=S)``);
    sha256: hex digest of the checkpoint file's bytes, or of the tensors themselves for
    random weights (``weight_sources.state_sha256``).
    """

    config: ModelConfig
    state: dict[str, torch.Tensor]
    source: str
    sha256: str


def random_state(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """GPT-2 initialisation: Linear weights and embeddings N(0, 0.02²), biases 0, LayerNorm (1, 0).

    Drawn on the CPU from a ``torch.Generator`` seeded with ``seed``, in the order of
    ``expected_shapes`` so the result depends on the seed alone.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(cfg).items():
        is_layernorm = name.startswith("ln_f") or any(f".{ln}." in name for ln in LAYERNORM_NAMES)
        if is_layernorm:
            fill = 1.0 if name.endswith("weight") else 0.0
            state[name] = torch.full(shape, fill)
        elif name.endswith("bias"):
            state[name] = torch.zeros(shape)
        else:
            state[name] = torch.randn(shape, generator=generator) * INIT_STD
    return state
