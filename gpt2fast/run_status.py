"""How far a run got, rank by rank, in its metadata; and the moment its files move into place.

The metadata holds one record per rank (a single-process run is rank 0 of 1):

    ranks[r] = {rank, host, device, pid, status, prompts: [i, ...], tokens,
                batches: [{prompts, status, iterations_completed}], decoded: [...], timings, error?}

status: starting -> running -> complete | interrupted | failed. Each rank rewrites only its
own record, under an exclusive lock on the partial err file (``flock``), and every rewrite
recomputes the summary at the top (``summarise``): status (failed if any rank failed, else
running until every rank ended, then interrupted if any was, else complete),
iterations_completed (the fewest any prompt completed), error (the failed ranks'), the
decodings of all ranks, and
steps_per_s (block applications to a batch, all batches and ranks, per second of the
slowest rank).

The rewrite that ends the last rank moves the files into place (``outputs.promote``),
unless the run failed: then they stay at their partial names. A rank that ends early
(interrupted, failed) stops the others: they look at the records between iterations
(``RunStatus.watch``) and stop as after Ctrl-C; running ranks also show a heartbeat there.
A rank that has ended waits for the others (``RunStatus.settle``); once a stop was requested
(Ctrl-C, a peer, or torchrun stopping the job because a rank died), a rank that has not
ended and whose heartbeat stood still for ``LOST_AFTER`` seconds is recorded as failed, with
how far its rows of the files got. Every record carries the run's ``run_id``: a rank left
over from a job that ended never writes into the metadata of a later run on the same names.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .interrupts import StopRequest
from .outputs import metadata_path, partial_path, promote, write_json_atomic

ENDED = ("complete", "interrupted", "failed")
LOST_AFTER = 15.0  # seconds a stopping rank waits for the others' records (torchrun kills after 30)
POLL_SECONDS = 0.5
WATCH_SECONDS = 2.0  # a running rank looks at the others' records this often (between iterations)
HEARTBEAT_SECONDS = 5.0  # and shows it is alive this often (its record's heartbeat)


def summarise(meta: dict) -> None:
    """Recompute the top-level fields from the rank records, in place."""
    ranks, n_layer = meta["ranks"], meta["model"]["n_layer"]
    statuses = [rank["status"] for rank in ranks]
    if "failed" in statuses:
        status = "failed"
    elif all(status in ENDED for status in statuses):
        status = "interrupted" if "interrupted" in statuses else "complete"
    else:
        status = "running"
    reached = [0] * len(meta["prompts"])
    for rank in ranks:
        for batch in rank["batches"]:
            for prompt in batch["prompts"]:
                reached[prompt] = batch["iterations_completed"]
    completed = min(reached, default=meta["flags"]["size"])
    applied = n_layer * sum(batch["iterations_completed"] for rank in ranks for batch in rank["batches"])
    run_s = max((rank["timings"].get("run_s") or 0.0 for rank in ranks), default=0.0)
    meta.update(status=status, complete=status == "complete", iterations_completed=completed,
                steps_completed=completed * n_layer,
                decoded=sorted((entry for rank in ranks for entry in rank["decoded"]),
                               key=lambda entry: (entry["iteration"], entry["prompt"])))
    errors = [(rank["rank"], rank["error"]) for rank in ranks if "error" in rank]
    if errors:
        meta["error"] = "; ".join(message if len(ranks) == 1 else f"rank {number}: {message}"
                                  for number, message in errors)
    if status in ENDED:
        finished = [rank["timings"]["finished"] for rank in ranks if "finished" in rank["timings"]]
        meta["timings"].update(finished=max(finished, default=None), run_s=round(run_s, 3),
                               steps_per_s=round(applied / run_s, 3) if run_s else None)


class RunStatus:
    """The run's metadata as rank ``rank`` keeps it: in memory, and in the metadata files
    beside the output files ``targets`` (none when every result stays in memory), the first
    target's partial array serving as the lock."""

    def __init__(self, meta: dict, targets: list[Path], rank: int):
        self.meta, self.targets, self.rank = meta, targets, rank
        self.files = [metadata_path(partial_path(target)) for target in targets]
        self.finals = [metadata_path(target) for target in targets]
        self.watched = self.beaten = -math.inf

    def publish(self) -> None:
        """Write the metadata as it starts (rank 0, once the files exist)."""
        summarise(self.meta)
        for path in self.files:
            write_json_atomic(path, self.meta)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock and the latest metadata in ``self.meta`` (a run of one rank
        has them already, and its partial err2 may not exist yet: no lock). FileNotFoundError
        (an OSError) when the run's partial array is not there (not made yet, or moved into
        place), StaleRun when the metadata there is another run's (this job is over)."""
        if not self.files or len(self.meta["ranks"]) == 1:
            yield
            return
        fd = os.open(partial_path(self.targets[0]), os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.meta = self.read()
            yield
        finally:
            os.close(fd)

    def read(self) -> dict:
        """This run's metadata on the disk: the partial file, or the final one once promoted
        (StaleRun when what is there belongs to another run)."""
        for path in (self.files[0], self.finals[0]):
            try:
                meta = json.loads(path.read_text())
            except FileNotFoundError:
                continue
            if meta.get("run_id") != self.meta["run_id"]:
                if path == self.finals[0]:
                    break  # an earlier run's results: this run's metadata is gone
                raise StaleRun(f"{path} now belongs to another run")
            return meta
        raise FileNotFoundError(f"the metadata of this run ({self.files[0]}) is gone")

    def record(self, mine: dict) -> None:
        """Replace this rank's record, unless it has ended (a rank recorded as lost stays
        so), and rewrite the metadata."""
        with self.locked():
            if self.meta["ranks"][self.rank]["status"] not in ENDED:
                self.meta["ranks"][self.rank] = copy.deepcopy(mine)  # the caller goes on changing its own
                self.rewrite()

    def rewrite(self) -> None:
        """Write ``self.meta`` (summarised) while holding the lock; the rewrite that ends the
        run moves the files into place unless it failed."""
        already_ended = self.meta["status"] in ENDED
        summarise(self.meta)
        for path in self.files:
            with contextlib.suppress(OSError) if self.meta["status"] == "failed" else contextlib.nullcontext():
                write_json_atomic(path, self.meta)  # a full disk may refuse a failed run's record: keep its error
        if not already_ended and self.meta["status"] in ("complete", "interrupted"):
            for target in self.targets:
                promote(partial_path(target), target)

    def settled(self, meta: dict) -> bool:
        """Whether every rank has ended and the files are where they stay (moved into place
        unless the run failed)."""
        if not all(rank["status"] in ENDED for rank in meta["ranks"]):
            return False
        return meta["status"] == "failed" or not self.files or not partial_path(self.targets[0]).exists()

    def watch(self, stop: StopRequest, mine: dict) -> None:
        """Between iterations: ask this rank to stop (``StopRequest.request_by_peer``) once
        another rank has ended early (interrupted or failed), and show it is alive
        (``mine["heartbeat"]``, rewritten every HEARTBEAT_SECONDS); reads the metadata at
        most every WATCH_SECONDS."""
        if not self.files or len(self.meta["ranks"]) == 1 or stop.requested:
            return
        now = time.monotonic()
        if now < self.watched + WATCH_SECONDS:
            return
        self.watched = now
        with contextlib.suppress(OSError, ValueError):  # between a rename and a read: look again later
            if any(rank["status"] in ("interrupted", "failed") for rank in self.read()["ranks"]):
                stop.request_by_peer()
                return
            if now >= self.beaten + HEARTBEAT_SECONDS:
                self.beaten = now
                mine["heartbeat"] = mine.get("heartbeat", 0) + 1
                self.record(mine)

    def settle(self, stop: StopRequest) -> dict:
        """Wait until the run has settled (at once for a team of one), then return its
        metadata. Once a stop was requested, a rank that has not ended and whose heartbeat
        has not changed for LOST_AFTER seconds is recorded as failed (``record_lost``)."""
        seen: dict[int, tuple[object, float]] = {}  # rank -> (its heartbeat, when it last changed)
        while True:
            meta = self.read() if self.files else self.meta
            if self.settled(meta):
                self.meta = meta
                return meta
            now = time.monotonic()
            for rank in meta["ranks"]:
                beat = (rank["status"], rank.get("heartbeat"))
                if seen.get(rank["rank"], (None, 0.0))[0] != beat:
                    seen[rank["rank"]] = (beat, now)
            silent = [number for number, (beat, since) in seen.items()
                      if beat[0] not in ENDED and now - since > LOST_AFTER]
            if stop.requested and silent:
                self.record_lost(silent)
                continue
            time.sleep(POLL_SECONDS)

    def record_lost(self, silent: list[int]) -> None:
        """Fail the ``silent`` ranks that have still not ended; their running batch gets the
        iterations its rows hold in every file (err, and err2 where recorded)."""
        with self.locked():
            files = [np.load(partial_path(target), mmap_mode="r") for target in self.targets]
            n_layer, every = self.meta["model"]["n_layer"], self.meta["flags"].get("matrix_every", 1)
            for rank in self.meta["ranks"]:
                if rank["rank"] not in silent or rank["status"] in ENDED:
                    continue
                rank.update(status="failed", error="the rank ended without a word (killed?); its iterations are "
                                                  "counted from its rows of the files")
                for batch in rank["batches"]:
                    if batch["status"] != "running":
                        continue
                    batch.update(status="failed", iterations_completed=min(
                        (written_iterations(array[prompt], n_layer, every) for array in files
                         for prompt in batch["prompts"]), default=0))
            self.rewrite()


class StaleRun(OSError):
    """The files this rank was writing belong to another run now (its job ended without it)."""


def written_iterations(rows: np.ndarray, n_layer: int, every: int) -> int:
    """Iterations a prompt's rows hold before their first NaN: err rows (L·N, 2) or err2
    rows (T, T, ceil(L·N / every)) (cell (0, 0), every ``every``-th step)."""
    series = np.asarray(rows[:, 0] if rows.ndim == 2 else rows[0, 0])
    missing = np.flatnonzero(np.isnan(series))
    entries = int(missing[0]) if missing.size else series.shape[0]
    steps = entries if rows.ndim == 2 else entries * every
    return steps // n_layer
