"""Data-parallel runs under ``torchrun``: the ranks of one job and how prompts are shared.

``torchrun --nproc-per-node K -m gpt2fast ...`` starts K processes (with ``--nnodes`` and
``--rdzv-*``, on several machines) that each read RANK, WORLD_SIZE and LOCAL_RANK from the
environment. They form a ``torch.distributed`` process group (gloo: only small Python
objects travel, at set-up) in which rank 0 checks the arguments and reads the prompts for
everyone (``Team.decide``), the prompts are shared by token count (``shard_by_tokens``), and
each rank runs its share on its own device (``cuda:LOCAL_RANK``, or the CPU) into the one
set of files. There are no collectives once the run starts: ranks meet again through the
metadata file (``run_status``), so a rank that dies cannot hang the others; generation
gathers its texts once at the end (``Team.gather``). Without
torchrun (no WORLD_SIZE, or WORLD_SIZE 1) a run is a team of one and nothing of this runs.
"""

from __future__ import annotations

import heapq
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
from torch.distributed import distributed_c10d

from .errors import InputError
from .interrupts import StopRequest

# How long a rank waits for the others at a meeting (rank 0's checks and prompts, which may be
# typed at the terminal; the files made; generation's texts, gathered when every rank is done).
# A rank that dies ends the job at once instead: torchrun stops the others.
PATIENCE = timedelta(days=7)
STOP_KEY = "gpt2fast/stopped"  # set in the job's store by a generating rank asked to stop
STOP_CHECK_SECONDS = 1.0
Checked = TypeVar("Checked")


class PeerRefused(InputError):
    """Rank 0 refused the run (and printed why); the other ranks end with this, silently."""


class RankError(InputError):
    """A refusal of this rank alone (its device), printed by the rank that found it."""


def leader_process() -> bool:
    """Whether this process reports for its job: not a torchrun rank other than 0 (never
    raises, even for an environment ``environment`` refuses)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


@dataclass
class Team:
    """This process's place in the job: rank of world_size, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    checked: float = field(default=-math.inf, repr=False, compare=False)  # ``share_stop``'s last look
    told: bool = field(default=False, repr=False, compare=False)  # whether it told the others to stop

    @property
    def leader(self) -> bool:
        """Rank 0: checks the arguments, reads the prompts, creates the files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def decide(self, check: Callable[[], Checked]) -> Checked:
        """Rank 0's ``check()``, its result (or its InputError) given to every rank: the
        other ranks raise PeerRefused when rank 0 refused."""
        if not self.distributed:
            return check()
        outcome: list = [None]
        if self.leader:
            try:
                outcome[0] = ("ok", check())
            except InputError as error:
                outcome[0] = ("refused", str(error))
                torch.distributed.broadcast_object_list(outcome, src=0)
                raise
        torch.distributed.broadcast_object_list(outcome, src=0)
        kind, value = outcome[0]
        if kind == "refused":
            raise PeerRefused(f"rank 0 refused the run: {value}")
        return value

    def gather(self, value) -> list:
        """Every rank's ``value`` (small, picklable), in rank order, once every rank sent its
        own: generation's texts, at the end."""
        if not self.distributed:
            return [value]
        everyone: list = [None] * self.world_size
        torch.distributed.all_gather_object(everyone, value)
        return everyone

    def share_stop(self, stop: StopRequest) -> None:
        """Between generated tokens and after the last: tell the other ranks once this one was
        asked to stop (Ctrl-C, SIGTERM), and stop this one once another was
        (``StopRequest.request_by_peer``), through the job's key-value store (looking at most
        every STOP_CHECK_SECONDS)."""
        if not self.distributed:
            return
        store = distributed_c10d._get_default_store()
        if stop.requested:
            if not stop.by_peer and not self.told:
                store.set(STOP_KEY, str(self.rank))
                self.told = True
            return
        if time.monotonic() >= self.checked + STOP_CHECK_SECONDS:
            self.checked = time.monotonic()
            if store.check([STOP_KEY]):
                stop.request_by_peer()

    def barrier(self) -> None:
        """Wait until every rank got here (set-up only)."""
        if self.distributed:
            torch.distributed.barrier()

    def device(self, device: torch.device) -> torch.device:
        """This rank's device for a resolved ``device``: ``cuda:LOCAL_RANK`` on a GPU."""
        if device.type != "cuda" or not self.distributed:
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise RankError(f"rank {self.rank} is local rank {self.local_rank}, but this machine has "
                             f"{torch.cuda.device_count()} CUDA devices: start at most that many processes per node")
        return torch.device("cuda", self.local_rank)

    def leave(self) -> None:
        """Leave the process group (no-op for a team of one)."""
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def environment() -> Team:
    """This process's place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), without
    joining anything: a team of one without them."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise InputError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world_size <= 1:
        return Team()
    if not 0 <= rank < world_size:
        raise InputError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
    return Team(rank=rank, world_size=world_size, local_rank=local_rank)


def join() -> Team:
    """The team this process belongs to (``environment``), its process group joined (gloo,
    waiting up to PATIENCE at each meeting) when it has more than one rank."""
    team = environment()
    if team.distributed and not torch.distributed.is_initialized():
        try:
            torch.distributed.init_process_group("gloo", rank=team.rank, world_size=team.world_size,
                                                 timeout=PATIENCE)
        except (ValueError, RuntimeError) as error:
            raise InputError(f"WORLD_SIZE is {team.world_size}, but this process is not part of a torchrun job "
                             f"({' '.join(str(error).split())[:200]}): start it with torchrun, or unset "
                             f"WORLD_SIZE") from None
    return team


def host_name() -> str:
    return socket.gethostname()


def shard_by_tokens(lengths: list[int], world_size: int) -> list[list[int]]:
    """Prompt indices for each rank, balanced by tokens: longest prompt first, each to the
    rank with the fewest tokens so far (ties: the lower rank); each rank's indices ascending.
    The largest share is within one prompt of the mean (LPT: at most 4/3 of the optimum)."""
    shares: list[list[int]] = [[] for _ in range(world_size)]
    loads = [(0, rank) for rank in range(world_size)]
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        tokens, rank = heapq.heappop(loads)
        shares[rank].append(index)
        heapq.heappush(loads, (tokens + lengths[index], rank))
    return [sorted(share) for share in shares]


def balance(lengths: list[int], shares: list[list[int]]) -> float:
    """The largest rank's tokens over the mean rank's (1.0: perfectly balanced)."""
    loads = [sum(lengths[i] for i in share) for share in shares]
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean else 1.0
