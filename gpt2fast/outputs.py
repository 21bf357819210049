"""The run's files: ``Eplot.npy``-style arrays in the original layout, and metadata JSON.

Layouts (float32, as the original wrote them, one row per prompt; step u = i·L + l):
    err  (P, L·N, 2)         err[p, u] = (mean_t |ŷ_0·ŷ_t|, mean of G) after step u
    err2 (P, T, T, L·N)      err2[p, :, :, u] = G after step u, NaN outside T_p × T_p
The C++ driver creates both files full of NaN, so entries a run has not reached (an
interrupted run) read as NaN, and fills them a chunk of iterations at a time; err2 can be
far larger than memory. This module holds the naming, sizing and metadata around them.

A run never writes over results in place: it writes ``Eplot.partial.npy`` and
``Eplot.partial.json`` beside ``Eplot.npy`` and moves them into place (``promote``, one
rename each) when it completes or stops gracefully. A killed run leaves the earlier results
as they were and its partial files, whose metadata names the run's pid; earlier results
memory-mapped in a notebook stay valid (a rename leaves their file intact). While it runs, a
run holds an advisory lock (``exclusive_outputs``) on each output, so a second run on the
same names is refused, and a reader can tell a running run from a gone one (``is_locked``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path


from .errors import InputError


def npy_path(name: str) -> Path:
    """``NAME`` -> ``NAME.npy``; a name already ending in ``.npy`` keeps its suffix."""
    return Path(name if name.endswith(".npy") else name + ".npy")


def metadata_path(array_path: Path) -> Path:
    """The JSON metadata beside an array file: ``Eplot.npy`` -> ``Eplot.json``."""
    return array_path.with_suffix(".json")


def partial_path(target: Path) -> Path:
    """Where a run writes ``target`` until it ends: ``Eplot.npy`` -> ``Eplot.partial.npy``."""
    return target.with_name(f"{target.stem}.partial{target.suffix}")


def lock_path(target: Path) -> Path:
    """The lock file of an output: ``Eplot.npy`` -> ``.Eplot.npy.lock`` beside it."""
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive_outputs(targets: list[Path]) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on each target's lock file for the block: a
    second run on any of them raises InputError naming the run that holds it. The locks go
    with the process (a killed run's lock is free); the lock files are removed on exit. A
    lock file that is a link, a FIFO or anything but a plain file is refused, never written."""
    with contextlib.ExitStack() as stack:
        for target in targets:
            path = lock_path(target)
            handle = stack.enter_context(os.fdopen(open_lock(target), "r+"))
            handle.truncate(0)
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            stack.callback(path.unlink, missing_ok=True)
        yield


def open_lock(target: Path) -> int:
    """A descriptor of ``target``'s lock file (created if missing) holding its exclusive
    flock. A run that ends unlinks its lock file, so a lock taken on a file since unlinked or
    replaced is dropped and taken again on the file now at the lock's path."""
    path = lock_path(target)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise InputError(f"cannot use the lock file {path}: {error.strerror} (remove it)") from None
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_nlink != 1:
            os.close(fd)
            raise InputError(f"the lock file {path} is not a plain file (a link, a FIFO, a device): remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise InputError(f"another gpt2fast run ({holder or 'pid unknown'}) is writing {target}; "
                             f"wait for it or choose another output name") from None
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return fd
        os.close(fd)


def temporary_path(path: Path) -> Path:
    """Where a file is written before its rename: ``Eplot.json`` -> ``Eplot.json.tmp``
    (``write_json_atomic``; the C++ driver's ``writing_path``: arrays being filled with NaN,
    err2 that the writer makes, until complete)."""
    return path.with_name(path.name + ".tmp")


def partial_files(target: Path) -> tuple[Path, Path, Path, Path]:
    """Every name a run writes ``target`` under until it ends: the partial array, its
    metadata, and the temporary files of both."""
    partial_json = metadata_path(partial_path(target))
    return partial_path(target), temporary_path(partial_path(target)), partial_json, temporary_path(partial_json)


def clear_partial(target: Path) -> None:
    """Remove what a killed run (or anyone) left at ``target``'s partial names, so the run
    creates fresh files there: a link is removed, never written through."""
    for path in partial_files(target):
        if os.path.lexists(path) and not stat.S_ISDIR(os.lstat(path).st_mode):
            path.unlink()


def is_locked(target: Path) -> bool:
    """Whether a run holds ``target``'s lock now (``exclusive_outputs``)."""
    try:
        with open(lock_path(target)) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:
        return False


def promote(partial: Path, target: Path) -> None:
    """Move a finished run's array and then its metadata from ``partial`` into place."""
    os.replace(partial, target)
    os.replace(metadata_path(partial), metadata_path(target))


def npy_bytes(shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Size on disk of a ``.npy`` of ``shape`` (float32 by default; header included, upper bound)."""
    return itemsize * math.prod(shape) + 256  # Python integers: exact at any size (numpy's int64 wraps)


def check_disk_space(planned: dict[Path, int]) -> None:
    """Raise OSError naming the sizes if the planned files would not fit on their disks.

    planned maps each output path to its size in bytes. The run writes partial files beside
    the outputs, so an existing output still takes its space until the run ends; a partial
    array (or its temporary) a killed run left there counts as free (the run removes it).
    """
    by_device: dict[int, tuple[Path, int]] = {}
    for path, size in planned.items():
        directory = path.parent.resolve()
        reclaimed = sum(leftover.stat().st_size for leftover in partial_files(path)[:2] if leftover.is_file())
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
    temporary = temporary_path(path)
    try:
        temporary.write_text(json.dumps(content, indent=2) + "\n")
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
