"""One consensus run end to end: engine, output files, metadata, progress, interrupts."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from .backends import batch_prompt_limit, make_engine, products
from .batches import plan_batches
from .config import ConsensusFlags
from .distributed import Team, host_name, shard_by_tokens
from .driver import (FileLayout, InMemory, Output, create_files, create_gram_file, drive, err_shape, gram_shape,
                     memory_outputs)
from .interrupts import graceful_stop
from .memory import consensus_memory, staging_budget
from .metadata import consensus_metadata, now
from .outputs import clear_partial, partial_path
from .precision import matmul_precision, storage_dtype
from .run_status import RunStatus
from .validation import batch_budget
from .weight_stream import WeightStream
from .weights import Weights

ERR_LAYOUT = "err[p, u] = (mean_t |y0.yt|, mean of G) after step u"
ERR2_LAYOUT = ("err2[p, :, :, j] = G after step u = j * every (files.err2.steps); NaN outside prompt p's "
               "T_p x T_p block")


def describe_device(device: torch.device) -> str:
    """``cpu`` or e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def run_on_this_rank(
    weights: Weights,
    model_name: str,
    texts: list[str],
    token_lists: list[list[int]],
    flags: ConsensusFlags,
    *,
    device: torch.device,
    dtype: str,
    backend: str = "torch",
    err_path: Path | None,
    gram_path: Path | None,
    wants_gram: bool,
    on_decode: Callable[[int, int, list[int]], None],
    show_progress: bool = True,
    second_signal_exits: bool = True,
    team: Team | None = None,
    memory_budget: int | None = None,
    matrix_format: tuple[int, str] = (1, "float32"),
    run_id: str | None = None,
) -> tuple[dict, int, InMemory]:
    """Run every prompt through N iterations and write the files.

    The prompts are shared among the team's ranks by tokens (``distributed``; all of them for
    a team of one); a rank runs its share in batches that fit its memory (``batches``: within
    ``memory_budget`` bytes when given), each batch writing its rows of the files. Rank 0
    creates the arrays and metadata as ``outputs.partial_path`` files beside err_path and
    gram_path; they move into place when the last rank completes or stops gracefully
    (``run_status``); after an error they stay where they are, the metadata saying "failed".
    backend is a resolved name (``gpt2fast.backends.resolve_backend``). err_path None: err
    is kept in memory; gram_path None with ``wants_gram``: err2 likewise (one rank only): the
    metadata records their ``path`` as null, no file is written for them, and the arrays are
    returned (``InMemory``).
    ``second_signal_exits``: see ``interrupts.graceful_stop``. matrix_format: (K, dtype) of
    err2, G after steps 0, K, 2K, ... as float32 or float16 (``driver.FileLayout``).
    on_decode(iteration, prompt_index, token_ids) is called at each decode iteration for
    each of this rank's prompts, with that prompt's T_p argmax ids. Returns the final
    metadata (also written beside each array) and the exit status: 0, 128 + signal after a
    stop, 1 when another rank failed. run_id: the same on every rank (rank 0's; default a
    new one), written into the metadata (``run_status``).
    """
    team = team or Team()
    cfg = weights.config
    stream = WeightStream(cfg, weights.state, seed=flags.seed, random_init=flags.random_init,
                          const_reset=flags.const_reset, device=device, dtype=storage_dtype(dtype),
                          owned=weights.single_use)
    lengths = [len(tokens) for tokens in token_lists]
    shares = shard_by_tokens(lengths, team.world_size)
    staging = staging_budget(memory_budget)
    batches = plan_batches(shares[team.rank], lengths, lambda batch: consensus_memory(
        cfg, batch, flags.iterations, wants_gram, backend, device, stream.wte.element_size(), staging),
        batch_budget(device, memory_budget), batch_prompt_limit(backend, cfg))  # the weights are loaded: what is free now
    layout = FileLayout(tuple(range(len(token_lists))), len(token_lists), max(lengths), *matrix_format,
                        gram_at_write=team.world_size == 1 and len(batches) == 1 and gram_path is not None)
    steps = cfg.n_layer * flags.iterations
    targets = [path for path in (err_path, gram_path) if path is not None]
    status = RunStatus(start_metadata(weights, model_name, texts, token_lists, flags, device, dtype, backend,
                                      layout, err_path, gram_path, wants_gram, shares, memory_budget, staging,
                                      run_id or uuid.uuid4().hex),
                       targets, team.rank)
    in_memory = memory_outputs(layout, steps, err=err_path is None, gram=wants_gram and gram_path is None)
    err_out = partial_path(err_path) if err_path else in_memory.err
    gram_out = partial_path(gram_path) if gram_path else in_memory.err2
    if team.leader:
        for path in targets:
            clear_partial(path)
        status.publish()
    mine = {"rank": team.rank, "host": host_name(), "device": describe_device(device), "pid": os.getpid(),
            "status": "running", "prompts": shares[team.rank], "tokens": sum(lengths[i] for i in shares[team.rank]),
            "batches": [{"prompts": batch, "status": "pending", "iterations_completed": 0} for batch in batches],
            "decoded": [], "timings": {"started": now()}}
    started = time.perf_counter()
    try:
        with graceful_stop(second_signal_exits) as stop, matmul_precision(dtype), tqdm(
            total=flags.iterations * len(batches), desc="consensus", unit="it", file=sys.stderr,
            disable=not (show_progress and team.leader), mininterval=0.5,
        ) as bar:
            if team.leader:
                create_files(err_out, gram_out, layout, steps)
            team.barrier()
            status.record(mine)
            for number, (batch, record) in enumerate(zip(batches, mine["batches"], strict=True)):
                if stop.requested:
                    break
                if len(batches) > 1:
                    bar.set_description(f"consensus, batch {number + 1}/{len(batches)}")
                done_before = bar.n
                record["status"] = "running"
                status.record(mine)
                completed = run_batch(stream, batch, token_lists, flags, dtype, backend, err_out, gram_out, layout,
                                      staging, on_decode, mine["decoded"], stop, lambda done: (
                                          bar.update(done_before + done - bar.n), status.watch(stop, mine)))
                record.update(status="complete" if completed == flags.iterations else "interrupted",
                              iterations_completed=completed)
            if layout.gram_at_write and gram_path and not partial_path(gram_path).exists():
                create_gram_file(partial_path(gram_path), layout, steps)  # stopped before the writer made it
            # a stop heard after the last iteration (while the writer finished) stopped nothing
            stopped = any(record["status"] != "complete" for record in mine["batches"])
            mine.update(status="interrupted" if stopped else "complete")
            mine["timings"].update(finished=now(), run_s=round(time.perf_counter() - started, 3))
            status.record(mine)
            meta = status.settle(stop)
    except BaseException as error:
        for record in mine["batches"]:
            if record["status"] == "running":
                record["status"] = "failed"
        mine.update(status="failed", error=str(error) or type(error).__name__)
        mine["timings"].update(finished=now(), run_s=round(time.perf_counter() - started, 3))
        with contextlib.suppress(OSError):  # a full disk, files not made yet or gone: report the run's error
            status.record(mine)
        raise
    exit_status = {"complete": 0, "interrupted": stop.exit_status(), "failed": 1}[meta["status"]]
    return meta, exit_status, in_memory


def run_batch(stream: WeightStream, batch: list[int], token_lists: list[list[int]], flags: ConsensusFlags,
              dtype: str, backend: str, err: Output, gram: Output | None, layout: FileLayout, staging: int,
              on_decode: Callable[[int, int, list[int]], None], decoded: list[dict], stop,
              on_progress: Callable[[int], None]) -> int:
    """Run the prompts ``batch`` (indices into token_lists) through the iterations into their
    rows of the outputs (partial files or arrays in memory), staging at most ``staging``
    bytes; returns the iterations completed."""
    engine = make_engine(backend, stream, [token_lists[i] for i in batch], flags.noff, dtype)

    def decode(iteration: int, tokens: torch.Tensor) -> None:
        for row, prompt in enumerate(batch):
            argmax_ids = tokens[row, : len(token_lists[prompt])].tolist()
            decoded.append({"iteration": iteration, "prompt": prompt, "tokens": argmax_ids})
            on_decode(iteration, prompt, argmax_ids)

    return drive(engine, flags.iterations, err, gram,
                 decode_iterations=frozenset(flags.decode_iterations), on_decode=decode,
                 on_progress=on_progress, stop=stop, place=dataclasses.replace(layout, rows=tuple(batch)),
                 staging=staging)


def start_metadata(weights: Weights, model_name: str, texts: list[str], token_lists: list[list[int]],
                   flags: ConsensusFlags, device: torch.device, dtype: str, backend: str, layout: FileLayout,
                   err_path: Path | None, gram_path: Path | None, wants_gram: bool, shares: list[list[int]],
                   memory_budget: int | None, staging: int, run_id: str) -> dict:
    """The metadata as the run starts: every rank "starting" with its share of the prompts."""
    steps = weights.config.n_layer * flags.iterations

    def recorded(path: Path | None) -> str | None:
        return None if path is None else str(path)  # None: kept in memory

    files = {"err": {"path": recorded(err_path), "shape": err_shape(layout, steps), "layout": ERR_LAYOUT}}
    if wants_gram:
        files["err2"] = {"path": recorded(gram_path), "dtype": layout.gram_dtype, "every": layout.gram_every,
                         "shape": gram_shape(layout, steps), "layout": ERR2_LAYOUT}
        if layout.gram_every > 1:
            files["err2"]["steps"] = list(range(0, steps, layout.gram_every))
    meta = consensus_metadata(
        model_name=model_name, weights=weights, flags=flags, texts=texts, token_lists=token_lists,
        device=describe_device(device), dtype=dtype, backend=backend, products=products(backend, device, dtype),
        files=files,
    )
    meta["flags"].update(matrix_every=layout.gram_every, matrix_dtype=layout.gram_dtype)
    meta.update(run_id=run_id, pid=os.getpid(), world_size=len(shares), memory_budget=memory_budget, staging_bytes=staging,
                decoded=[],
                ranks=[{"rank": rank, "status": "starting", "prompts": share, "batches": [], "decoded": [],
                        "timings": {}} for rank, share in enumerate(shares)])
    return meta
