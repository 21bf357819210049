"""The run's files: ``Eplot.npy``-style arrays in the original layout, and metadata JSON.

Layouts (float32, as the original wrote them, one row per prompt; step u = i·L + l):
    err  (P, L·N, 2)         err[p, u] = (mean_t |ŷ_0·ŷ_t|, mean of G) after step u
    err2 (P, T, T, L·N)      err2[p, :, :, u] = G after step u, NaN outside T_p × T_p
Both files are created full of NaN, so entries a run has not reached (an interrupted run)
read as NaN. err2 can be far larger than memory; it is written through a memory map one
chunk of iterations at a time.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

NAN_FILL_BYTES = 64 << 20


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


def create_nan_npy(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """Create a float32 ``.npy`` of ``shape`` full of NaN, filled a slab at a time."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    flat = array.reshape(-1)
    slab = max(1, NAN_FILL_BYTES // 4)
    for start in range(0, flat.size, slab):
        flat[start : start + slab] = np.nan
    array.flush()
    return array


class ConsensusOutputs:
    """The err file and, when asked for, the err2 file of one consensus run.

    n_prompts P, n_layer L, n_iterations N, length T (the longest prompt).
    """

    def __init__(
        self,
        err_path: Path,
        gram_path: Path | None,
        *,
        n_prompts: int,
        n_layer: int,
        n_iterations: int,
        length: int,
    ):
        self.n_layer = n_layer
        steps = n_layer * n_iterations
        self.err_path = err_path
        self.gram_path = gram_path
        self.err = create_nan_npy(err_path, (n_prompts, steps, 2))
        self.gram = None
        if gram_path is not None:
            self.gram = create_nan_npy(gram_path, (n_prompts, length, length, steps))

    @property
    def wants_gram(self) -> bool:
        return self.gram is not None

    def write(self, first_iteration: int, err_chunk: torch.Tensor, gram_chunk: torch.Tensor | None) -> None:
        """Store iterations ``first_iteration ..`` of a chunk.

        err_chunk [c, P, L, 2] and gram_chunk [c, P, L, T, T] float32 (CPU) hold c
        consecutive iterations; they are transposed into the file layouts above.
        """
        iterations, n_prompts = err_chunk.shape[:2]
        first = first_iteration * self.n_layer
        steps = iterations * self.n_layer
        self.err[:, first : first + steps] = (
            err_chunk.permute(1, 0, 2, 3).reshape(n_prompts, steps, 2).numpy()
        )
        if self.gram is not None and gram_chunk is not None:
            length = gram_chunk.shape[-1]
            self.gram[:, :, :, first : first + steps] = (
                gram_chunk.permute(1, 3, 4, 0, 2).reshape(n_prompts, length, length, steps).numpy()
            )

    def flush(self) -> None:
        self.err.flush()
        if self.gram is not None:
            self.gram.flush()

    def paths(self) -> list[Path]:
        return [self.err_path] + ([self.gram_path] if self.gram_path is not None else [])


def write_json_atomic(path: Path, content: dict) -> None:
    """Write ``content`` as indented JSON, replacing ``path`` in one rename."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(temporary, path)
