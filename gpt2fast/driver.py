"""A consensus engine run through the C++ loop driver (``gpt2fast._driver``).

The driver owns the N-iteration loop, two staging slots of c iterations each (one when the
whole run fits in it), and a writer thread that transposes full slots into the ``.npy``
files (see ``csrc/``). A backend hands
it one iteration as a step: a captured CUDA graph when the engine can provide one (launched
from C++, no Python per iteration; under --const-reset on triton from iteration 1, with
iteration 0 through the callable), else a Python callable that fills a slot row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ._driver import Driver, create_array
from .backends.engine import Engine
from .interrupts import StopRequest
from .memory import STAGING_BYTES, chunk_iterations

FLUSH_SECONDS = 5.0  # a filling slot's err reaches the disk at least this often


@dataclass(frozen=True)
class FileLayout:
    """The run's files and where an engine's prompts sit in them: they hold ``prompts``
    prompts padded to ``length`` tokens (other batches, other ranks); the engine's prompt p
    is row rows[p]. err2 holds G after steps 0, gram_every, 2·gram_every, ... only (its last
    axis has ceil(L·N / gram_every) entries), as ``gram_dtype`` (float32 or float16). With
    ``gram_at_write`` (a run that holds every row) the writer makes err2 under a temporary
    name, renamed when complete: no NaN fill first (a run of one chunk writes whole rows; more
    chunks fill a sparse file, and NaN over the steps a stop left out), and a killed run leaves
    no err2 file."""

    rows: tuple[int, ...]
    prompts: int
    length: int
    gram_every: int = 1
    gram_dtype: str = "float32"
    gram_at_write: bool = False

    @classmethod
    def whole(cls, engine, gram_at_write: bool) -> FileLayout:
        """The files hold exactly the engine's prompts, in order, err2 every step in float32."""
        return cls(tuple(range(engine.n_prompts)), engine.n_prompts, engine.length, gram_at_write=gram_at_write)

    def gram_steps(self, steps: int) -> int:
        """Entries of err2's last axis for a run of ``steps`` steps."""
        return -(-steps // self.gram_every)


Output = Path | np.ndarray  # a .npy file's path, or an array of its shape and dtype to fill in memory


def create_files(err: Output, gram: Output | None, layout: FileLayout, steps: int) -> None:
    """Create the run's files full of NaN: err (P, L·N, 2) float32 and, when ``gram``, err2
    (P, T, T, ceil(L·N / every)) as the layout says (unless the writer makes it:
    ``gram_at_write``); outputs in memory are left as they are (``memory_outputs`` made
    them). Raises OSError when they cannot be written."""
    if isinstance(err, Path):
        create_array(str(err), err_shape(layout, steps))
    if isinstance(gram, Path) and not layout.gram_at_write:
        create_gram_file(gram, layout, steps)


def create_gram_file(gram_path: Path, layout: FileLayout, steps: int) -> None:
    """Create err2 full of NaN: (P, T, T, ceil(L·N / every)) as the layout says."""
    create_array(str(gram_path), gram_shape(layout, steps), layout.gram_dtype)


def err_shape(layout: FileLayout, steps: int) -> list[int]:
    """err's shape for a run of ``steps`` steps: (P, L·N, 2)."""
    return [layout.prompts, steps, 2]


def gram_shape(layout: FileLayout, steps: int) -> list[int]:
    """err2's shape for a run of ``steps`` steps: (P, T, T, ceil(L·N / every))."""
    return [layout.prompts, layout.length, layout.length, layout.gram_steps(steps)]


class InMemory(NamedTuple):
    """A run's results kept in memory (None where it writes a file, or without err2)."""

    err: np.ndarray | None
    err2: np.ndarray | None


def memory_outputs(layout: FileLayout, steps: int, err: bool, gram: bool) -> InMemory:
    """err and err2 as asked, NaN-filled arrays in memory of the shapes and dtypes
    ``create_files`` gives the files: results that never touch the disk."""
    return InMemory(np.full(err_shape(layout, steps), np.nan, np.float32) if err else None,
                    np.full(gram_shape(layout, steps), np.nan, layout.gram_dtype) if gram else None)


def drive(
    engine: Engine,
    n_iterations: int,
    err: Output,
    gram: Output | None,
    *,
    decode_iterations: frozenset[int] = frozenset(),
    on_decode: Callable[[int, torch.Tensor], None] = lambda index, tokens: None,
    on_progress: Callable[[int], None] = lambda completed: None,
    stop: StopRequest | None = None,
    chunk: int | None = None,
    flush_seconds: float = FLUSH_SECONDS,
    place: FileLayout | None = None,
    staging: int = STAGING_BYTES,
) -> int:
    """Run iterations 0..N-1 of ``engine`` and write err (and err2 when ``gram``): into files
    of its own prompts, created here (arrays in memory: NaN-filled by the caller,
    ``memory_outputs``), or, with ``place``, at those rows of the outputs ``create_files``
    made.

    The files are filled a chunk at a time, ``chunk`` iterations (default: as many as
    ``staging`` bytes hold, ``chunk_iterations``); err also every ``flush_seconds`` while a
    chunk fills. on_decode(i, tokens [P, T] int64) follows
    each decode iteration; on_progress(iterations completed) follows each iteration (each
    chunk on the CUDA-graph path). Returns the number of iterations completed and written,
    N unless a stop was requested. Raises OSError when a file cannot be written.
    """
    wants_gram = gram is not None
    if chunk is None:
        chunk = chunk_iterations(engine.n_prompts, engine.n_layer, engine.length, wants_gram, n_iterations, staging)
    if place is None:
        place = FileLayout.whole(engine, gram_at_write=isinstance(gram, Path))
        create_files(err, gram, place, engine.n_layer * n_iterations)
    driver = Driver(
        engine.n_prompts, engine.n_layer, engine.length, n_iterations, min(chunk, n_iterations),
        driver_output(err), driver_output(gram), flush_seconds, list(place.rows), place.prompts,
        place.length, place.gram_every, place.gram_dtype, place.gram_at_write,
    )
    if stop is not None:
        stop.on_request(driver.request_stop)

    def decode(index: int) -> None:
        on_decode(index, engine.decode(index))

    decodes = set(decode_iterations)
    err_slots = [torch.from_numpy(driver.err_slot(slot)) for slot in (0, 1)]
    gram_slots = [torch.from_numpy(driver.gram_slot(slot)) if wants_gram else None for slot in (0, 1)]

    def step(index: int, slot: int, position: int) -> None:  # position: the iteration's place in the chunk
        gram = gram_slots[slot]
        engine.iteration(index, err_slots[slot][position], None if gram is None else gram[position])

    try:
        graph = engine.capture_iteration(wants_gram, n_iterations)
        if graph is not None:
            return driver.run_graph(
                graph.graph.raw_cuda_graph_exec(), torch.cuda.current_stream().cuda_stream,
                graph.err.data_ptr(), graph.gram.data_ptr() if wants_gram else 0,
                0 if graph.iteration is None else graph.iteration.data_ptr(), graph.first_iteration, step,
                decode, decodes, on_progress,
            )
        return driver.run_callable(step, decode, decodes, on_progress)
    finally:
        driver.finish()


def driver_output(output: Output | None) -> str | np.ndarray | None:
    """An output as the C++ driver takes it: a path as str, an array as it is."""
    return str(output) if isinstance(output, Path) else output
