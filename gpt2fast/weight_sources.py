"""Where a run's weights come from (SPEC §2).

``--weights PATH`` loads that checkpoint; ``--weights random`` draws a seeded GPT-2
initialisation. Without ``--weights``: the local Hugging Face cache, else a download through
``huggingface_hub`` (unless ``HF_HUB_OFFLINE`` is set), else seeded random weights with a loud
warning that says everywhere it looked.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import huggingface_hub

from .checkpoints import CONFIG_FILE, HF_FILES, load_checkpoint, reason
from .config import ModelConfig
from .weights import Weights, random_state, state_sha256

RANDOM_SPEC = "random"
HF_ORG = "openai-community"
DOWNLOAD_FILES = (CONFIG_FILE, "model.safetensors")
TRUTHY = ("1", "ON", "YES", "TRUE")
PROBE_TIMEOUT_S = 3.0


def resolve_weights(
    spec: str | None,
    model_name: str,
    preset: ModelConfig,
    preset_explicit: bool,
    seed: int,
    warn: Callable[[str], None],
) -> Weights:
    """The weights named by ``spec``: a checkpoint path, ``"random"``, or ``None`` to search.

    The search is for ``model_name`` (a preset name such as ``gpt2-xl``); ``warn`` receives
    one-line notes for the user (stderr in the CLI).
    """
    if spec == RANDOM_SPEC:
        warn(f"note: using random GPT-2 initialisation (seed={seed}), not trained weights")
        return random_weights(preset, seed)
    if spec is not None:
        return load_checkpoint(Path(spec).expanduser(), preset, preset_explicit)
    cache_dir = hf_cache_dir()
    repo_ids = (f"{HF_ORG}/{model_name}", model_name)
    for repo_id in repo_ids:
        file = cached_checkpoint(cache_dir, repo_id)
        if file is not None:
            weights = load_checkpoint(file, preset, preset_explicit)
            return dataclasses.replace(weights, source=f"hf-cache:{repo_id}:{file}")
    looked = [
        f"WARNING: {repo_id} is not in the Hugging Face cache {cache_dir} "
        f"(looked for {' or '.join(HF_FILES)})"
        for repo_id in repo_ids
    ]
    if is_offline():
        looked.append("WARNING: download skipped because HF_HUB_OFFLINE is set")
    elif (unreachable := hub_unreachable()) is not None:
        looked.append(f"WARNING: download skipped: {unreachable}")
    else:
        downloaded, failure = download_checkpoint(cache_dir, repo_ids[0])
        if downloaded is not None:
            weights = load_checkpoint(downloaded, preset, preset_explicit)
            return dataclasses.replace(weights, source=f"download:{repo_ids[0]}")
        looked.append(f"WARNING: download of {repo_ids[0]} failed: {failure}")
    warn(f"WARNING: no trained weights found for {model_name}; using RANDOM weights (seed={seed})")
    for line in looked:
        warn(line)
    warn("WARNING: results will NOT be those of trained GPT-2 (--weights PATH loads a checkpoint)")
    return random_weights(preset, seed)


def random_weights(cfg: ModelConfig, seed: int) -> Weights:
    """Seeded GPT-2 initialisation of a model of sizes ``cfg``; source ``random(seed=S)``,
    sha256 ``state_sha256`` of the tensors (each hashed by the thread that drew it)."""
    digests: dict[str, str] = {}
    state = random_state(cfg, seed, digests)
    return Weights(config=cfg, state=state, source=f"random(seed={seed})", sha256=state_sha256(state, digests))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as ``huggingface_hub`` finds it, read from the environment now:
    ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
    ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache_home).expanduser() / "huggingface" / "hub"


def cached_checkpoint(cache_dir: Path, repo_id: str) -> Path | None:
    """The cached ``model.safetensors`` (else ``pytorch_model.bin``) of ``repo_id``'s main
    revision: a path inside its snapshot directory, or ``None``. Never touches the network."""
    for filename in HF_FILES:
        found = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return Path(found)
    return None


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a truthy value (1, on, yes, true)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in TRUTHY


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub cannot be reached (one quick TCP connect), or None if it can.

    Without this, ``huggingface_hub`` retries a dead network for about 20 s before failing.
    """
    endpoint = urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host} is not reachable ({reason(exc)})"
    return None


def download_checkpoint(cache_dir: Path, repo_id: str) -> tuple[Path | None, str]:
    """Download ``config.json`` and ``model.safetensors`` of ``repo_id`` into ``cache_dir``.

    Returns ``(path of model.safetensors, "")``, or ``(None, why it failed)``.
    """
    paths = {}
    for filename in DOWNLOAD_FILES:
        try:
            paths[filename] = huggingface_hub.hf_hub_download(
                repo_id=repo_id, filename=filename, cache_dir=cache_dir
            )
        except Exception as exc:
            return None, f"{filename}: {reason(exc)}"
    return Path(paths["model.safetensors"]), ""
