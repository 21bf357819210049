"""One consensus run end to end: engine, output files, metadata, progress, interrupts."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from .backends import make_engine, products
from .config import ConsensusFlags
from .driver import drive
from .interrupts import graceful_stop
from .metadata import consensus_metadata, now
from .memory import is_out_of_memory
from .outputs import clear_partial, metadata_path, partial_path, promote, write_json_atomic
from .precision import matmul_precision, storage_dtype
from .weight_stream import WeightStream
from .weights import Weights

ERR_LAYOUT = "err[p, u] = (mean_t |y0.yt|, mean of G) after step u"
ERR2_LAYOUT = "err2[p, :, :, u] = G after step u; NaN outside prompt p's T_p x T_p block"


def describe_device(device: torch.device) -> str:
    """``cpu`` or e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def run_consensus(
    weights: Weights,
    model_name: str,
    texts: list[str],
    token_lists: list[list[int]],
    flags: ConsensusFlags,
    *,
    device: torch.device,
    dtype: str,
    backend: str = "torch",
    err_path: Path,
    gram_path: Path | None,
    on_decode: Callable[[int, int, list[int]], None],
    show_progress: bool = True,
    scratch: tuple[Path, ...] = (),
    second_signal_exits: bool = True,
) -> tuple[dict, int]:
    """Run every prompt through N iterations in one batch and write the files.

    The arrays and metadata are written as ``outputs.partial_path`` files beside err_path
    and gram_path and moved into place when the run completes or stops gracefully; after
    an error they stay where they are, the metadata saying "failed" (``outputs``).
    backend is a resolved name (``gpt2fast.backends.resolve_backend``). ``scratch``: array
    paths that are temporary (the API's in-memory results): the metadata records their
    ``path`` as null, and no metadata file is written beside them.
    ``second_signal_exits``: see ``interrupts.graceful_stop``.
    on_decode(iteration, prompt_index, token_ids) is called at each decode iteration for
    each prompt, with that prompt's T_p argmax ids. Returns the final metadata (also
    written beside each array) and the exit status: 0, or 128 + signal after a stop.
    """
    cfg = weights.config
    stream = WeightStream(
        cfg,
        weights.state,
        seed=flags.seed,
        random_init=flags.random_init,
        const_reset=flags.const_reset,
        device=device,
        dtype=storage_dtype(dtype),
        owned=weights.single_use,
    )
    engine = make_engine(backend, stream, token_lists, flags.noff, dtype)
    steps = cfg.n_layer * flags.iterations
    def recorded(path: Path) -> str | None:
        return None if path in scratch else str(path)

    files = {"err": {"path": recorded(err_path), "shape": [engine.n_prompts, steps, 2], "layout": ERR_LAYOUT}}
    if gram_path is not None:
        files["err2"] = {
            "path": recorded(gram_path),
            "shape": [engine.n_prompts, engine.length, engine.length, steps],
            "layout": ERR2_LAYOUT,
        }
    meta = consensus_metadata(
        model_name=model_name, weights=weights, flags=flags, texts=texts,
        token_lists=token_lists, device=describe_device(device), dtype=dtype,
        backend=engine.backend, products=products(engine.backend, device, dtype), files=files,
    )
    meta["decoded"] = []
    meta["pid"] = os.getpid()
    targets = [path for path in (err_path, gram_path) if path is not None]
    meta_paths = [metadata_path(partial_path(path)) for path in targets if path not in scratch]
    for path in targets:
        clear_partial(path)
    for path in meta_paths:
        write_json_atomic(path, meta)

    def decode(iteration: int, tokens: torch.Tensor) -> None:
        for prompt, ids in enumerate(token_lists):
            argmax_ids = tokens[prompt, : len(ids)].tolist()
            meta["decoded"].append({"iteration": iteration, "prompt": prompt, "tokens": argmax_ids})
            on_decode(iteration, prompt, argmax_ids)

    started = time.perf_counter()
    with graceful_stop(second_signal_exits) as stop, matmul_precision(dtype), tqdm(
        total=flags.iterations, desc="consensus", unit="it", file=sys.stderr,
        disable=not show_progress, mininterval=0.5,
    ) as bar:
        try:
            completed = drive(
                engine, flags.iterations, partial_path(err_path), gram_path and partial_path(gram_path),
                decode_iterations=frozenset(flags.decode_iterations), on_decode=decode,
                on_progress=lambda done: bar.update(done - bar.n), stop=stop,
            )
        except Exception as error:
            if not isinstance(error, OSError) and not is_out_of_memory(error):
                raise
            meta.update(status="failed", error=str(error))
            for path in meta_paths:
                with contextlib.suppress(OSError):  # a full disk may refuse this too: report the run's error
                    write_json_atomic(path, meta)
            raise
    elapsed = time.perf_counter() - started
    finished = completed == flags.iterations
    meta.update(
        status="complete" if finished else "interrupted",
        complete=finished,
        iterations_completed=completed,
        steps_completed=completed * cfg.n_layer,
    )
    meta["timings"].update(
        finished=now(),
        run_s=round(elapsed, 3),
        steps_per_s=round(completed * cfg.n_layer / elapsed, 3) if elapsed > 0 else None,
    )
    for path in meta_paths:
        write_json_atomic(path, meta)
    for path in targets:
        promote(partial_path(path), path, with_metadata=path not in scratch)
    return meta, stop.exit_status()
