"""Tiny GPT-2 models and the checkpoint files real tools would write for them.

Tests build their own checkpoints (Hugging Face safetensors / torch ``.bin``, nanoGPT
``ckpt.pt``) and a Hugging Face hub cache, so nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from gpt2fast.config import VOCAB_SIZE, ModelConfig
from gpt2fast.weights import LAYERNORM_NAMES, LINEAR_NAMES, expected_shapes


def tiny_config(
    n_layer: int = 2, n_head: int = 2, n_embd: int = 128, n_positions: int = 1024
) -> ModelConfig:
    """A small GPT-2 shape with the real vocabulary (50257) and head dim ``n_embd // n_head``."""
    return ModelConfig(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        vocab_size=VOCAB_SIZE,
        n_positions=n_positions,
    )


def is_layernorm(name: str) -> bool:
    """True for the canonical names of LayerNorm parameters (``ln_1``, ``ln_2``, ``ln_f``)."""
    return name.startswith("ln_f.") or any(f".{ln}." in name for ln in LAYERNORM_NAMES)


def tiny_state(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """A canonical float32 state dict where every parameter is random, so a mix-up shows.

    Weights and embeddings ~ N(0, 0.02²); LayerNorm weights ~ 1 + N(0, 0.1²); all biases
    (LayerNorm and Linear) ~ N(0, 0.02²).
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(cfg).items():
        noise = torch.randn(shape, generator=generator)
        if is_layernorm(name) and name.endswith(".weight"):
            state[name] = 1.0 + 0.1 * noise
        else:
            state[name] = 0.02 * noise
    return state


def is_conv1d_weight(name: str) -> bool:
    """True for the four projection weights that Hugging Face stores transposed."""
    return any(name.endswith(f".{linear}.weight") for linear in LINEAR_NAMES)


def hf_tensors(
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    prefix: str = "",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """``state`` as Hugging Face stores it: Conv1D weights ``[in, out]``, ``prefix`` on every
    key, the attention-mask buffers, and ``lm_head.weight`` when ``prefix`` is ``transformer.``
    (as ``GPT2LMHeadModel`` does). Every tensor owns its memory (safetensors refuses sharing)."""
    tensors = {}
    for name, tensor in state.items():
        stored = tensor.t() if is_conv1d_weight(name) else tensor
        tensors[prefix + name] = stored.to(dtype).contiguous().clone()
    mask = torch.tril(torch.ones(cfg.n_positions, cfg.n_positions, dtype=torch.bool))
    for layer in range(cfg.n_layer):
        tensors[f"{prefix}h.{layer}.attn.bias"] = mask.view(
            1, 1, cfg.n_positions, cfg.n_positions
        ).clone()
        tensors[f"{prefix}h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    if prefix == "transformer.":
        tensors["lm_head.weight"] = state["wte.weight"].to(dtype).clone()
    return tensors


def write_hf_config(dirpath: Path, cfg: ModelConfig) -> Path:
    """A ``config.json`` like the one of ``openai-community/gpt2``, with ``cfg``'s sizes."""
    values = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-05,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
    }
    path = Path(dirpath) / "config.json"
    path.write_text(json.dumps(values, indent=2))
    return path


def write_hf_checkpoint(
    dirpath: Path,
    filename: str,
    tensors: dict[str, torch.Tensor],
    cfg: ModelConfig,
    with_config: bool,
) -> Path:
    """Write ``tensors`` to ``dirpath/filename`` (safetensors or ``torch.save`` by suffix),
    with a ``config.json`` beside it when asked; returns the weights file."""
    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    path = dirpath / filename
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    else:
        torch.save(tensors, path)
    if with_config:
        write_hf_config(dirpath, cfg)
    return path


def write_hf_safetensors(
    dirpath: Path,
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    with_config: bool = True,
    prefix: str = "",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``dirpath/model.safetensors`` (and ``config.json``); returns the weights file."""
    tensors = hf_tensors(cfg, state, prefix, dtype)
    return write_hf_checkpoint(dirpath, "model.safetensors", tensors, cfg, with_config)


def write_hf_bin(
    dirpath: Path,
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    with_config: bool = True,
    prefix: str = "transformer.",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``dirpath/pytorch_model.bin`` with ``torch.save`` (and ``config.json``); returns it."""
    tensors = hf_tensors(cfg, state, prefix, dtype)
    return write_hf_checkpoint(dirpath, "pytorch_model.bin", tensors, cfg, with_config)


def write_nanogpt_ckpt(
    path: Path,
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    bias: bool = True,
    vocab_size: int | None = None,
    compiled_prefix: bool = False,
) -> Path:
    """Write a nanoGPT ``train.py`` checkpoint of ``state`` to ``path``; returns ``path``.

    Keys ``transformer.*`` in Linear layout (``_orig_mod.`` before them when
    ``compiled_prefix``), ``lm_head.weight`` sharing ``wte``'s storage. ``vocab_size`` above
    ``cfg.vocab_size`` pads ``wte`` with extra random rows, as nanoGPT's 50304. ``bias=False``
    leaves out every Linear and LayerNorm bias.
    """
    vocab_size = cfg.vocab_size if vocab_size is None else vocab_size
    wte = state["wte.weight"]
    padding = 0.02 * torch.randn(
        vocab_size - wte.shape[0], wte.shape[1], generator=torch.Generator().manual_seed(1)
    )
    model = {}
    for name, tensor in state.items():
        if not bias and name.endswith(".bias"):
            continue
        model[f"transformer.{name}"] = (
            torch.cat([wte, padding]) if name == "wte.weight" else tensor.clone()
        )
    model["lm_head.weight"] = model["transformer.wte.weight"]
    if compiled_prefix:
        model = {f"_orig_mod.{key}": tensor for key, tensor in model.items()}
    model_args = {
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "block_size": cfg.n_positions,
        "bias": bias,
        "vocab_size": vocab_size,
        "dropout": 0.0,
    }
    checkpoint = {
        "model": model,
        "optimizer": {"state": {}, "param_groups": []},
        "model_args": model_args,
        "iter_num": 5000,
        "best_val_loss": torch.tensor(2.85),
        "config": {"learning_rate": 6e-4, "dataset": "openwebtext"},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def hf_repo_folder(cache_root: Path, repo_id: str) -> Path:
    """``cache_root/models--{org}--{name}``, the folder the hub cache keeps a model repo in."""
    return Path(cache_root) / ("models--" + repo_id.replace("/", "--"))


def build_hf_cache(
    cache_root: Path,
    repo_id: str,
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    fmt: str = "safetensors",
) -> Path:
    """Lay out ``repo_id`` in a Hugging Face hub cache at ``cache_root``; returns the snapshot dir.

    As ``huggingface_hub`` does: each file's bytes in ``blobs/<sha256>``, the snapshot
    ``snapshots/<commit>/<file>`` a relative symlink to its blob, and ``refs/main`` holding
    the 40-hex commit (no newline). ``fmt`` is ``"safetensors"`` or ``"bin"``.
    """
    repo = hf_repo_folder(cache_root, repo_id)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=repo))
    writer = {"safetensors": write_hf_safetensors, "bin": write_hf_bin}[fmt]
    writer(staging, cfg, state)
    hashes = {
        file.name: hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(staging.iterdir())
    }
    commit = hashlib.sha1(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, sha in hashes.items():
        os.replace(staging / name, repo / "blobs" / sha)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", sha))
    shutil.rmtree(staging)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
