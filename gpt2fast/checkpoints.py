"""Read a GPT-2 checkpoint, Hugging Face or nanoGPT, into canonical ``Weights``.

Hugging Face: ``model.safetensors`` or ``pytorch_model.bin`` with an optional ``config.json``
beside it; keys with the ``transformer.`` prefix (``GPT2LMHeadModel``) or without
(``GPT2Model``); the four projection weights stored as Conv1D, ``[in, out]``.

nanoGPT: ``ckpt.pt``, a dict holding ``model`` (a state dict in ``Linear`` layout, keys
``transformer.*``, maybe behind ``_orig_mod.`` from ``torch.compile``) and ``model_args``
(sizes, ``block_size``, ``bias``); or a bare state dict in a ``.pt``/``.pth`` file.

Pickled files are read with ``torch.load(weights_only=True)``, so loading runs no code from
the file. Every problem is raised as a one-line ``InputError`` that names the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from .config import VOCAB_SIZE, ModelConfig
from .errors import InputError
from .weights import LINEAR_NAMES, Weights, check_shapes, check_state, expected_shapes

HF_FILES = ("model.safetensors", "pytorch_model.bin")
NANOGPT_FILE = "ckpt.pt"
CONFIG_FILE = "config.json"
SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
KEY_PREFIXES = ("_orig_mod.", "transformer.")
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
TIED_KEY = "lm_head.weight"
HF_CONFIG_KEYS = {
    "n_layer": ("n_layer",),
    "n_head": ("n_head",),
    "n_embd": ("n_embd",),
    "vocab_size": ("vocab_size",),
    "n_positions": ("n_positions", "n_ctx"),
}
NANOGPT_CONFIG_KEYS = {**HF_CONFIG_KEYS, "n_positions": ("block_size",)}
HASH_BLOCK = 1 << 20
REASON_CHARS = 160
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
UNSAFE_PICKLE_MARK = "WeightsUnpickler error:"


def load_checkpoint(path: Path, preset: ModelConfig, preset_explicit: bool) -> Weights:
    """Load the checkpoint at ``path`` (a file, or a directory holding one) as float32 CPU weights.

    The checkpoint's own sizes (``config.json`` or nanoGPT's ``model_args``) define the model;
    without them ``preset`` does. With ``preset_explicit`` the two must agree. A vocabulary
    padded past 50257 (nanoGPT's 50304) is cut back to the tokenizer's 50257 rows.
    """
    file = find_checkpoint_file(Path(path))
    origin = str(file)
    if file.suffix in (".pt", ".pth"):
        raw, file_cfg, bias = read_nanogpt(file)
        conv1d = False
    else:
        raw = read_safetensors(file) if file.suffix == ".safetensors" else read_torch(file)
        file_cfg, bias, conv1d = read_config_json(file.parent / CONFIG_FILE), True, True
    state = canonical_names(raw, origin)
    del raw  # the conversion below then frees each original tensor as it replaces it
    cfg = file_cfg if file_cfg is not None else _preset_with_file_vocab(preset, state)
    state, cfg = fit_vocab(state, cfg, origin)
    if preset_explicit and cfg != preset:
        raise InputError(
            f"{origin}: checkpoint sizes ({describe(cfg)}) differ from the chosen model's "
            f"({describe(preset)})"
        )
    if not bias:
        state = fill_missing_biases(state, cfg)
    for name in list(state):
        state[name] = _to_float32(name, state[name], conv1d)
    check_state(state, cfg, origin)
    return Weights(config=cfg, state=state, source=origin, sha256=file_sha256(file))


def inspect_checkpoint(path: Path, preset: ModelConfig, preset_explicit: bool) -> ModelConfig | None:
    """What a checkpoint tells without reading its tensors: it exists and is of a known type,
    a safetensors header parses, and the sizes of a ``config.json`` beside it (returned; None
    without one) agree with an explicitly chosen preset up to the vocabulary, which loading
    may trim. InputError otherwise; ``load_checkpoint`` checks everything again."""
    file = find_checkpoint_file(Path(path))
    cfg = None if file.suffix in (".pt", ".pth") else read_config_json(file.parent / CONFIG_FILE)
    if cfg is not None and preset_explicit and dataclasses.replace(cfg, vocab_size=preset.vocab_size) != preset:
        raise InputError(f"{file}: checkpoint sizes ({describe(cfg)}) differ from the chosen model's "
                         f"({describe(preset)})")
    if file.suffix == ".safetensors":
        check_header(file, cfg, preset)
    return cfg


def check_header(file: Path, cfg: ModelConfig | None, preset: ModelConfig) -> None:
    """A safetensors header's tensor names, dtypes and shapes checked as loading checks the
    tensors (Conv1D weights read as ``[out, in]``), against ``cfg`` (its ``config.json``) or,
    without one, ``preset`` with the vocabulary ``wte`` has. No tensor is read."""
    shapes = {}
    try:
        with safetensors.safe_open(file, "pt") as handle:
            for key in handle.keys():
                name, view = canonical_name(key), handle.get_slice(key)
                if name is None or name == TIED_KEY:
                    continue
                if not view.get_dtype().startswith(("F", "BF")):
                    raise InputError(f"{file}: {key} has dtype {view.get_dtype()}, expected floating point")
                shape = tuple(view.get_shape())
                shapes[name] = shape[::-1] if len(shape) == 2 and _is_conv1d_weight(name) else shape
    except InputError:
        raise
    except Exception as exc:  # the library raises its own error types for a damaged header
        raise InputError(f"{file}: cannot read as safetensors ({reason(exc)})") from None
    wte = shapes.get("wte.weight", ())
    cfg = cfg or (dataclasses.replace(preset, vocab_size=wte[0]) if len(wte) == 2 else preset)
    check_vocabulary(cfg, str(file))
    layers = {int(name.split(".")[1]) for name in shapes if name.startswith("h.") and name.split(".")[1].isdigit()}
    if len(layers) != cfg.n_layer:  # before listing the expected names: a config may claim 10**9 layers
        raise InputError(f"{file}: holds {len(layers)} blocks, the model of {describe(cfg)} has {cfg.n_layer}")
    check_shapes(shapes, cfg, str(file))


def find_checkpoint_file(path: Path) -> Path:
    """The checkpoint file ``path`` names: itself, or the known file inside a directory.

    In a directory ``model.safetensors`` wins over ``pytorch_model.bin``, then ``ckpt.pt``.
    The result is absolute, with symlinks kept (a Hugging Face snapshot's ``config.json``
    sits beside the link, not beside the blob it points to).
    """
    path = Path(os.path.abspath(path))
    if path.is_dir():
        for name in (*HF_FILES, NANOGPT_FILE):
            if (path / name).is_file():
                return path / name
        raise InputError(f"{path}: directory holds none of {', '.join((*HF_FILES, NANOGPT_FILE))}")
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if path.suffix not in SUFFIXES:
        raise InputError(f"{path}: unknown checkpoint type, expected one of {', '.join(SUFFIXES)}")
    return path


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU, in its stored dtype."""
    try:
        return safetensors.torch.load_file(file, device="cpu")
    except Exception as exc:
        raise InputError(f"{file}: cannot read as safetensors ({reason(exc)})") from None


def read_torch(file: Path) -> dict[str, torch.Tensor]:
    """The state dict pickled in ``file``, loaded without running code (``weights_only``)."""
    loaded = _torch_load(file)
    if not _is_state_dict(loaded):
        raise InputError(f"{file}: does not hold a state dict of named tensors")
    return loaded


def read_nanogpt(file: Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None, bool]:
    """``(state dict, sizes or None, has biases)`` of a nanoGPT checkpoint or bare state dict.

    A bare state dict takes its sizes from a ``config.json`` beside the file when there is one.
    """
    loaded = _torch_load(file)
    if isinstance(loaded, Mapping) and "model" in loaded and "model_args" in loaded:
        state, args = loaded["model"], loaded["model_args"]
        if not _is_state_dict(state) or not isinstance(args, Mapping):
            raise InputError(f"{file}: 'model' is not a state dict or 'model_args' is not a dict")
        bias = args.get("bias", True)
        if not isinstance(bias, bool):
            raise InputError(f"{file}: model_args bias = {bias!r} is not true or false")
        return state, config_from(args, NANOGPT_CONFIG_KEYS, f"{file} (model_args)"), bias
    if _is_state_dict(loaded):
        return loaded, read_config_json(file.parent / CONFIG_FILE), True
    raise InputError(
        f"{file}: neither a nanoGPT checkpoint ('model', 'model_args') nor a state dict"
    )


def read_config_json(file: Path) -> ModelConfig | None:
    """Sizes from a Hugging Face ``config.json``, or ``None`` when there is no such file."""
    if not file.exists():
        return None
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
        raise InputError(f"{file}: cannot read as JSON ({reason(exc)})") from None
    if not isinstance(values, dict):
        raise InputError(f"{file}: holds {type(values).__name__}, expected a JSON object")
    return config_from(values, HF_CONFIG_KEYS, str(file))


def config_from(values: Mapping, keys: dict[str, tuple[str, ...]], origin: str) -> ModelConfig:
    """A ``ModelConfig`` whose fields come from the first key of ``keys[field]`` in ``values``.

    Sizes must be positive integers with ``n_embd`` a multiple of ``n_head``.
    """
    sizes = {}
    for field, candidates in keys.items():
        key = next((k for k in candidates if k in values), None)
        if key is None:
            raise InputError(f"{origin}: no {' or '.join(candidates)} given")
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{origin}: {key} = {value!r} is not a positive integer")
        sizes[field] = value
    cfg = ModelConfig(**sizes)
    if cfg.n_embd % cfg.n_head:
        raise InputError(f"{origin}: n_embd={cfg.n_embd} is not a multiple of n_head={cfg.n_head}")
    return cfg


def canonical_name(key: str) -> str | None:
    """A checkpoint key under its canonical name (prefixes stripped); None for the
    attention-mask buffers, which are not parameters."""
    name = key
    for prefix in KEY_PREFIXES:
        name = name.removeprefix(prefix)
    return None if name.endswith(BUFFER_SUFFIXES) else name


def canonical_names(raw: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """``raw`` under canonical names: prefixes stripped, attention-mask buffers and the tied
    ``lm_head`` dropped. Raises ``InputError`` for a non-float tensor or an untied ``lm_head``."""
    state = {}
    for key, tensor in raw.items():
        name = canonical_name(key)
        if name is None:
            continue
        if not tensor.is_floating_point():
            raise InputError(f"{origin}: {key} has dtype {tensor.dtype}, expected floating point")
        state[name] = tensor
    lm_head = state.pop(TIED_KEY, None)
    wte = state.get("wte.weight")
    if lm_head is not None and wte is not None and not torch.equal(lm_head, wte):
        raise InputError(f"{origin}: lm_head.weight differs from wte.weight; GPT-2 ties them")
    return state


def check_vocabulary(cfg: ModelConfig, origin: str) -> None:
    """Refuse a vocabulary smaller than the GPT-2 tokenizer's."""
    if cfg.vocab_size < VOCAB_SIZE:
        raise InputError(f"{origin}: vocabulary of {cfg.vocab_size} tokens, the GPT-2 tokenizer needs {VOCAB_SIZE}")


def fit_vocab(
    state: dict[str, torch.Tensor], cfg: ModelConfig, origin: str
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Cut a padded ``wte`` ``[V > 50257, C]`` to its first 50257 rows; refuse ``V < 50257``."""
    check_vocabulary(cfg, origin)
    wte = state.get("wte.weight")
    if cfg.vocab_size == VOCAB_SIZE or wte is None or wte.shape[0] != cfg.vocab_size:
        return state, cfg
    return {**state, "wte.weight": wte[:VOCAB_SIZE]}, dataclasses.replace(
        cfg, vocab_size=VOCAB_SIZE
    )


def fill_missing_biases(
    state: dict[str, torch.Tensor], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """``state`` plus float32 zero tensors for every Linear and LayerNorm bias it lacks."""
    biases = {
        name: torch.zeros(shape)
        for name, shape in expected_shapes(cfg).items()
        if name.endswith(".bias") and name not in state
    }
    return {**state, **biases}


def file_sha256(file: Path) -> str:
    """Hex SHA-256 of the bytes of ``file``, read in blocks."""
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"{file}: cannot read ({reason(exc)})") from None
    return digest.hexdigest()


def describe(cfg: ModelConfig) -> str:
    """``cfg`` as ``n_layer=.., n_head=.., n_embd=.., vocab_size=.., n_positions=..``."""
    return ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg))


def reason(exc: BaseException) -> str:
    """A short one-line account of ``exc``: its type and the first line of its message."""
    text = ANSI_ESCAPE.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def _torch_load(file: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if UNSAFE_PICKLE_MARK in text:
            detail = text.split(UNSAFE_PICKLE_MARK, 1)[1].split(". ", 1)[0].strip()
            raise InputError(
                f"{file}: refused, it pickles objects other than tensors ({detail})"
            ) from None
        raise InputError(f"{file}: cannot read as a PyTorch checkpoint ({reason(exc)})") from None


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _preset_with_file_vocab(preset: ModelConfig, state: dict[str, torch.Tensor]) -> ModelConfig:
    """``preset``, with the vocabulary size read off ``wte`` when it is a matrix."""
    wte = state.get("wte.weight")
    if wte is None or wte.dim() != 2:
        return preset
    return dataclasses.replace(preset, vocab_size=wte.shape[0])


def _is_conv1d_weight(name: str) -> bool:
    """True for the four projection weights Hugging Face stores as Conv1D ``[in, out]``."""
    return name.startswith("h.") and any(
        name.endswith(f".{linear}.weight") for linear in LINEAR_NAMES
    )


def _to_float32(name: str, tensor: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """``tensor`` as contiguous float32 on the CPU, Conv1D weights transposed to ``[out, in]``."""
    if conv1d and tensor.dim() == 2 and _is_conv1d_weight(name):
        tensor = tensor.t()
    return tensor.to(device="cpu", dtype=torch.float32).contiguous()
