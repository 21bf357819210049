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
(``RunStatus.watch``) and stop as after Ctrl-C. A rank that has ended waits for the others
(``RunStatus.settle``); once a stop was requested (Ctrl-C, a peer, or torchrun stopping the
job because a rank died), it waits at most ``LOST_AFTER`` seconds, then records the silent
ranks as failed, with how far their rows of the err file got.
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
    beside ``targets`` (none for in-memory results), the first target's partial array
    serving as the lock."""

    def __init__(self, meta: dict, targets: list[Path], with_metadata: list[Path], rank: int):
        self.meta, self.targets, self.rank = meta, targets, rank
        self.files = [metadata_path(partial_path(target)) for target in with_metadata]
        self.finals = [metadata_path(target) for target in with_metadata]
        self.watched = -math.inf

    def publish(self) -> None:
        """Write the metadata as it starts (rank 0, once the files exist)."""
        summarise(self.meta)
        for path in self.files:
            write_json_atomic(path, self.meta)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock and the latest metadata in ``self.meta``."""
        if not self.files:
            yield
            return
        # O_CREAT: a rank may record (a failure) before rank 0 has made the array, which
        # then truncates the same file; none records after the run's last record moved it
        fd = os.open(partial_path(self.targets[0]), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.meta = self.read()
            yield
        finally:
            os.close(fd)

    def read(self) -> dict:
        """The metadata on the disk: the partial file, or the final one once promoted."""
        for path in (self.files[0], self.finals[0]):
            with contextlib.suppress(FileNotFoundError):
                return json.loads(path.read_text())
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
            with_metadata = {final.with_suffix(".npy") for final in self.finals}
            for target in self.targets:
                promote(partial_path(target), target, with_metadata=target in with_metadata)

    def watch(self, stop: StopRequest) -> None:
        """Ask this rank to stop (``StopRequest.request_by_peer``) once another rank has
        ended early (interrupted or failed); reads the metadata at most every WATCH_SECONDS."""
        if not self.files or len(self.meta["ranks"]) == 1 or stop.requested:
            return
        if time.monotonic() < self.watched + WATCH_SECONDS:
            return
        self.watched = time.monotonic()
        with contextlib.suppress(OSError, ValueError):  # between a rename and a read: look again later
            if any(rank["status"] in ("interrupted", "failed") for rank in self.read()["ranks"]):
                stop.request_by_peer()

    def settle(self, stop: StopRequest) -> dict:
        """Wait until every rank has ended (at once for a team of one), then return the
        metadata; after a stop request, ranks silent for LOST_AFTER seconds are failed."""
        deadline = None
        while True:
            meta = self.read() if self.files else self.meta
            if all(rank["status"] in ENDED for rank in meta["ranks"]):
                self.meta = meta
                return meta
            if stop.requested and deadline is None:
                deadline = time.monotonic() + LOST_AFTER
            if deadline is not None and time.monotonic() > deadline:
                self.record_lost()
                continue
            time.sleep(POLL_SECONDS)

    def record_lost(self) -> None:
        """Fail the ranks that have not ended, with how far their rows got in the err file."""
        with self.locked():
            err = np.load(partial_path(self.targets[0]), mmap_mode="r")
            n_layer = self.meta["model"]["n_layer"]
            for rank in self.meta["ranks"]:
                if rank["status"] in ENDED:
                    continue
                rank.update(status="failed", error="the rank ended without a word (killed?); its iterations are "
                                                  "counted from its rows of the err file")
                for batch in rank["batches"]:
                    batch.update(status="failed", iterations_completed=min(
                        (written_steps(err[prompt]) // n_layer for prompt in batch["prompts"]), default=0))
            self.rewrite()


def written_steps(rows: np.ndarray) -> int:
    """Steps before the first NaN of a prompt's err rows (L·N, 2)."""
    missing = np.flatnonzero(np.isnan(np.asarray(rows[:, 0])))
    return int(missing[0]) if missing.size else rows.shape[0]
