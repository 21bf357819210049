"""A consensus run's arrays and metadata, from memory or from the files a run wrote.

Files written by the original script have no metadata JSON: ``metadata`` is then None and
everything else works the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .outputs import metadata_path, npy_path


@dataclass
class ConsensusResult:
    """err (P, L·N, 2) and err2 (P, T, T, L·N) float32 (None when not recorded), in the
    layouts of ``outputs``; NaN marks steps a stopped run did not reach. metadata: the run's
    JSON (model, flags, prompts, tokens, timings, decoded ids), or None for the original's
    files. exit_status: 0, or 128 + the signal that stopped the run."""

    err: np.ndarray
    err2: np.ndarray | None
    metadata: dict | None
    exit_status: int = 0

    @property
    def n_layer(self) -> int | None:
        """L, from the metadata (None without it)."""
        return None if self.metadata is None else int(self.metadata["model"]["n_layer"])

    @property
    def decoded(self) -> list[dict]:
        """The argmax decodings: {"iteration", "prompt", "tokens"} each ([] without metadata)."""
        return [] if self.metadata is None else list(self.metadata.get("decoded", []))


def read_metadata(array_path: Path) -> dict | None:
    path = metadata_path(array_path)
    return json.loads(path.read_text()) if path.exists() else None


def load_result(savefile: str | os.PathLike, matrixerror: str | os.PathLike | None = None) -> ConsensusResult:
    """The arrays a run wrote (memory-mapped, read-only) and the metadata beside them."""
    err_path = npy_path(os.fspath(savefile))
    err = np.load(err_path, mmap_mode="r")
    err2 = None if matrixerror is None else np.load(npy_path(os.fspath(matrixerror)), mmap_mode="r")
    if err.ndim != 3 or err.shape[-1] != 2:
        raise ValueError(f"{err_path}: expected an err array of shape (P, steps, 2), got {err.shape}")
    if err2 is not None and (err2.ndim != 4 or err2.shape[0] != err.shape[0] or err2.shape[3] != err.shape[1]):
        raise ValueError(f"{matrixerror}: expected err2 of shape (P, T, T, {err.shape[1]}), got {err2.shape}")
    metadata = read_metadata(err_path)
    check_metadata_describes(metadata, err_path, {"err": err, "err2": err2})
    return ConsensusResult(err=err, err2=err2, metadata=metadata)


def check_metadata_describes(metadata: dict | None, err_path: Path, arrays: dict[str, np.ndarray | None]) -> None:
    """Raise InputError unless the metadata beside ``err_path`` records the shapes of these
    arrays (a file of one run beside the metadata of another is refused, not drawn)."""
    if not isinstance(metadata, dict):
        return
    files = metadata.get("files") if isinstance(metadata.get("files"), dict) else {}
    for role, array in arrays.items():
        recorded = files.get(role, {}).get("shape") if isinstance(files.get(role), dict) else None
        if array is not None and recorded is not None and tuple(recorded) != array.shape:
            raise InputError(f"{metadata_path(err_path)} describes {role} of shape {tuple(recorded)}, but the array "
                             f"has shape {array.shape}: they are from different runs")
    prompts = metadata.get("prompts")
    if isinstance(prompts, list) and prompts and all(isinstance(p, dict) and "tokens" in p for p in prompts):
        shape = (len(prompts), max(len(p["tokens"]) for p in prompts))
        for role, array in arrays.items():
            if array is not None and array.shape[: 1 if role == "err" else 2] != shape[: 1 if role == "err" else 2]:
                raise InputError(f"{metadata_path(err_path)} describes {shape[0]} prompts of up to {shape[1]} "
                                 f"tokens, but {role} has shape {array.shape}: they are from different runs")
