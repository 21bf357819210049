"""The JSON written beside each output array: everything needed to reproduce and read a run."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata as package_metadata

from .config import ConsensusFlags
from .weights import Weights


def versions() -> dict[str, str]:
    """Versions of Python and of the packages whose behaviour the numbers depend on."""
    found = {"python": platform.python_version()}
    for package in ("gpt2fast", "torch", "numpy", "triton", "tiktoken"):
        try:
            found[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def host() -> dict[str, str | None]:
    """The machine's processor and the CPU panel-kernel variant it runs (``avx512``,
    ``avx2``, or None where the CPU backend's few-row GEMMs use oneDNN)."""
    from .kernels.panel_linear import kernel_variant

    return {"machine": platform.machine(), "processor": processor_name(), "panel_kernel": kernel_variant()}


def processor_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prompt_records(texts: list[str], token_lists: list[list[int]]) -> list[dict]:
    return [
        {"text": text, "tokens": tokens, "length": len(tokens)}
        for text, tokens in zip(texts, token_lists, strict=True)
    ]


def consensus_metadata(
    *,
    model_name: str,
    weights: Weights,
    flags: ConsensusFlags,
    texts: list[str],
    token_lists: list[list[int]],
    device: str,
    dtype: str,
    backend: str,
    products: str,
    files: dict[str, dict],
) -> dict:
    """The metadata of a consensus run as it starts (status ``running``, nothing completed).

    files maps a role (``err``, ``err2``) to ``{"path", "shape", "layout"}``.
    """
    cfg = weights.config
    return {
        "tool": "gpt2fast",
        "status": "running",
        "complete": False,
        "iterations_completed": 0,
        "steps_completed": 0,
        "steps_total": cfg.n_layer * flags.iterations,
        "model": {"name": model_name, **asdict(cfg)},
        "weights": {"source": weights.source, "sha256": weights.sha256},
        "flags": {
            "size": flags.iterations,
            "noff": flags.noff,
            "random_init": flags.random_init,
            "const_reset": flags.const_reset,
            "decode": list(flags.decode_iterations),
            "seed": flags.seed,
        },
        "command": sys.argv,
        "device": device,
        "dtype": dtype,
        "backend": backend,
        "products": products,
        "versions": versions(),
        "host": host(),
        "prompts": prompt_records(texts, token_lists),
        "step_index": {
            "formula": "u = iteration * n_layer + layer",
            "n_layer": cfg.n_layer,
            "iterations": flags.iterations,
        },
        "files": files,
        "timings": {"started": now()},
    }
