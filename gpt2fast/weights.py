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

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from . import _weight_prep
from .config import ModelConfig
from .errors import InputError
from .seeded_randn import randn_in_turn

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


def check_shapes(shapes: dict[str, tuple[int, ...]], cfg: ModelConfig, origin: str) -> None:
    """Raise ``InputError`` unless ``shapes`` (canonical name -> shape) are exactly the
    parameters of ``cfg``."""
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise InputError(f"{origin}: missing {len(missing)} tensor(s), first {missing[0]!r}")
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:
        raise InputError(f"{origin}: unexpected tensor {unexpected[0]!r} for this model")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise InputError(f"{origin}: {name} has shape {shapes[name]}, the model needs {shape} "
                             f"(n_layer={cfg.n_layer}, n_embd={cfg.n_embd})")


def check_state(state: dict[str, torch.Tensor], cfg: ModelConfig, origin: str) -> None:
    """Raise ``InputError`` unless ``state`` holds exactly the parameters of ``cfg``."""
    check_shapes({name: tuple(tensor.shape) for name, tensor in state.items()}, cfg, origin)
    for name in state:
        if not state[name].is_floating_point():
            raise InputError(f"{origin}: {name} is not a floating-point tensor")
        if not torch.isfinite(state[name]).all():
            raise InputError(f"{origin}: {name} holds NaN or infinite values")


def parameter_count(cfg: ModelConfig) -> int:
    """The parameters of a GPT-2 of ``cfg``'s sizes (exact; nothing allocated): embeddings,
    12·C² + 13·C per block, ln_f."""
    width = cfg.n_embd
    return (cfg.vocab_size + cfg.n_positions) * width + cfg.n_layer * (12 * width * width + 13 * width) + 2 * width


@dataclass(frozen=True)
class Weights:
    """A model's sizes, its canonical float32 state dict, and where it came from.

    source: a human-readable origin (a path, ``hf-cache:...``, ``random(seed=S)``);
    sha256: hex SHA-256 of the checkpoint file's bytes, or for random weights
    ``state_sha256(state)``: SHA-256 over each tensor's name, dtype, shape and own XXH64.
    single_use: weights the API loaded for one run (``api.load_weights``): that run takes
    their tensors (``state`` is emptied) and keeps one copy of each, in the layout it computes
    on. Weights made otherwise are left as they are (a run then copies what it needs).
    """

    config: ModelConfig
    state: dict[str, torch.Tensor]
    source: str
    sha256: str
    single_use: bool = False


def is_drawn(name: str) -> bool:
    """Whether the GPT-2 initialisation draws parameter ``name``: Linear weights and the
    embeddings (biases are 0, LayerNorms (1, 0))."""
    is_layernorm = name.startswith("ln_f") or any(f".{ln}." in name for ln in LAYERNORM_NAMES)
    return name.endswith("weight") and not is_layernorm


def random_state(cfg: ModelConfig, seed: int, digests: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """GPT-2 initialisation: Linear weights and embeddings N(0, 0.02²), biases 0, LayerNorm (1, 0).

    The values are those of one ``torch.Generator`` seeded with ``seed`` drawing in the order
    of ``expected_shapes``, so they depend on the seed alone:

        generator = torch.Generator().manual_seed(seed)
        for name, shape in expected_shapes(cfg).items():
            if is_drawn(name):
                state[name] = torch.randn(shape, generator=generator, dtype=torch.float32) * INIT_STD

    drawn on ``torch.get_num_threads()`` threads with these bits (``seeded_randn``).
    ``digests``, when given, receives each drawn tensor's ``tensor_xxh64``, computed by the
    thread that drew it.
    """
    shapes = expected_shapes(cfg)
    drawn = [name for name in shapes if is_drawn(name)]
    scale = np.float32(INIT_STD)  # what ``tensor * INIT_STD`` multiplies float32 by

    def finish(index: int, tensor: torch.Tensor) -> None:
        values = tensor.numpy()
        np.multiply(values, scale, out=values)  # one thread: torch's mul_ would start more
        if digests is not None:
            digests[drawn[index]] = tensor_xxh64(tensor)

    tensors = dict(zip(drawn, randn_in_turn(seed, [shapes[name] for name in drawn], torch.get_num_threads(), finish)))
    state = {}
    for name, shape in shapes.items():
        if name in tensors:
            state[name] = tensors[name]
        else:
            state[name] = torch.full(shape, 1.0 if name.endswith("weight") else 0.0, dtype=torch.float32)
    return state


def tensor_xxh64(tensor: torch.Tensor) -> str:
    """Hex XXH64 (seed 0) of a tensor's raw bytes in row-major order (csrc/xxh64.h): a fast
    non-cryptographic hash, at memory speed where SHA-256 would cost about as much as drawing
    random weights."""
    data = tensor.detach().to("cpu").contiguous()
    return f"{_weight_prep.xxh64(data.data_ptr(), data.nbytes):016x}"


def state_sha256(state: dict[str, torch.Tensor], digests: dict[str, str] | None = None) -> str:
    """Hex SHA-256 that identifies a state dict, computable one tensor at a time: over the line
    ``{name}:{dtype}:{shape}:{tensor_xxh64}\n`` of each name in sorted order (for example
    ``h.0.attn.c_attn.weight:torch.float32:(2304, 768):0123456789abcdef``). ``digests``: the
    ``tensor_xxh64`` of tensors already hashed, by name."""
    known = digests or {}
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        own = known.get(name) or tensor_xxh64(tensor)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:{own}\n".encode())
    return digest.hexdigest()
