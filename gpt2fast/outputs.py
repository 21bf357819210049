"""The run's files: ``Eplot.npy``-style arrays in the original layout, and metadata JSON.

Layouts (float32, as the original wrote them, one row per prompt; step u = i·L + l):
    err  (P, L·N, 2)         err[p, u] = (mean_t |ŷ_0·ŷ_t|, mean of G) after step u
    err2 (P, T, T, L·N)      err2[p, :, :, u] = G after step u, NaN outside T_p × T_p
The C++ driver creates both files full of NaN, so entries a run has not reached (an
interrupted run) read as NaN, and fills them a chunk of iterations at a time; err2 can be
far larger than memory. This module holds the naming, sizing and metadata around them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np


def npy_path(name: str) -> Path:
    """``NAME`` -> ``NAME.npy``; a name already ending in ``.npy`` keeps its suffix."""
    return Path(name if name.endswith(".npy") else name + ".npy")


def metadata_path(array_path: Path) -> Path:
    """The JSON metadata beside an array file: ``Eplot.npy`` -> ``Eplot.json``."""
    return array_path.with_suffix(".json")


def npy_bytes(shape: tuple[int, ...]) -> int:
    """Size on disk of a float32 ``.npy`` of ``shape`` (header included, upper bound)."""
    return 4 * int(np.prod(shape)) + 256


def check_disk_space(planned: dict[Path, int]) -> None:
    """Raise OSError naming the sizes if the planned files would not fit on their disks.

    planned maps each output path to its size in bytes; an existing file at a path counts
    as free space since the run replaces it.
    """
    by_device: dict[int, tuple[Path, int]] = {}
    for path, size in planned.items():
        directory = path.parent.resolve()
        reclaimed = path.stat().st_size if path.exists() else 0
        device = os.stat(directory).st_dev
        anchor, total = by_device.get(device, (directory, 0))
        by_device[device] = (anchor, total + size - reclaimed)
    for directory, needed in by_device.values():
        free = shutil.disk_usage(directory).free
        if needed > free:
            raise OSError(
                f"the output files need {format_bytes(needed)} but {directory} has "
                f"{format_bytes(free)} free"
            )


def format_bytes(count: int) -> str:
    """Human-readable size: 1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def write_json_atomic(path: Path, content: dict) -> None:
    """Write ``content`` as indented JSON, replacing ``path`` in one rename."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(temporary, path)
