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
    return ConsensusResult(err=err, err2=err2, metadata=read_metadata(err_path))
