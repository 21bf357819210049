"""One iteration's kernels on a timeline: what programmatic dependent launch lets overlap.

Each kernel is a ``Stage``. Kernels run one after another (stream order); the DRAM is one
server whose bandwidth the streams in flight share equally (processor sharing). A stage:

    start    = previous end + boundary
    stream   = its bytes not prefetched, asked for at start + pre (the LayerNorm merge)
    loop_end = max(start + pre + fill + loop', DRAM done with its stream and its prefetch + fill)
    end      = max(loop_end + tail, start + floor)

``loop``: its K loop as the SM's own limits allow (issue, tensor, shared memory, the DRAM's
latency), ``loop'`` the same with its prefetched share of the bytes as L2 hits (``hit_loop``);
``floor``: a bound of its own (the L2 bytes at the L2 bandwidth); ``tail``: the split-K
reduction. A stage without bytes (``stream_bytes`` 0) keeps the DRAM out of it.

Prefetch: a stage launched as a programmatic dependent launch (``early``) may be placed
(its programs resident) while stages before it still run, once the stage before it is placed
and ``triggers`` (its programs let the next launch start as they start), and asks L2 for ``prefetch_bytes`` of its
weights then, before its wait (``skinny_linear.prefetch_weights``); those bytes join the
DRAM's streams. Placement follows launch order, at the events start, loop end and end of each
stage, while the busiest-SM occupancies of the stages holding room sum to ≤ 1 (a stage gives
its room back when its K loop ends: its programs other than each tile's last exit) and the
prefetched bytes no K loop has read yet fit ``l2_room``; at the latest a stage is placed when
the one before it ends (a plain launch: when it starts). Without prefetches the timeline is
the plain sum of the kernels' own times (``Stage.serial``). The streams share the DRAM per
request, so a prefetch can also slow the running stage's stream: the timeline is not bound
to be shorter than that sum.
"""

from __future__ import annotations

from dataclasses import dataclass

EPSILON_BYTES = 1e-3


@dataclass(frozen=True)
class Stage:
    """One kernel launch on the timeline (times in µs, bytes in bytes)."""

    boundary: float
    loop: float
    hit_loop: float | None = None  # the K loop when all its bytes are L2 hits (None: as ``loop``)
    pre: float = 0.0
    fill: float = 0.0
    tail: float = 0.0
    floor: float = 0.0
    stream_bytes: float = 0.0
    prefetch_bytes: float = 0.0
    occupancy: float = 1.0  # share of the busiest SM's room its programs take
    early: bool = False  # a programmatic dependent launch: placed while the stage before runs
    triggers: bool = False  # lets the next launch start as its programs start (gdc_launch_dependents)

    def prefetched_loop(self) -> float:
        """The K loop with ``prefetch_bytes`` of its ``stream_bytes`` L2 hits (``hit_loop``), the rest from DRAM."""
        if not self.prefetch_bytes or not self.stream_bytes or self.hit_loop is None:
            return self.loop
        share = min(self.prefetch_bytes / self.stream_bytes, 1.0)
        return share * self.hit_loop + (1.0 - share) * self.loop

    def serial(self, bandwidth: float) -> float:
        """Its time alone after an idle DRAM: boundary + max(floor, pre + fill + max(loop, bytes / bandwidth) + tail)."""
        stream = self.stream_bytes / bandwidth if self.stream_bytes else 0.0
        return self.boundary + max(self.floor, self.pre + self.fill + max(self.loop, stream) + self.tail)


class Dram:
    """A server of ``bandwidth`` bytes per µs shared equally by the requests in flight."""

    def __init__(self, bandwidth: float):
        self.bandwidth = bandwidth
        self.now = 0.0
        self.left: dict[int, float] = {}
        self.done: dict[int, float] = {}

    def ask(self, at: float, size: float) -> int:
        """A request of ``size`` bytes made at time ``at`` (not before an earlier request's time)."""
        self._advance(at)
        request = len(self.done) + len(self.left)
        if size <= EPSILON_BYTES:
            self.done[request] = at
        else:
            self.left[request] = size
        return request

    def finished(self, request: int) -> float:
        """When ``request`` is served; no request may be made before that time afterwards."""
        while request not in self.done:
            if not self.left:
                raise KeyError(f"no request {request}")
            self._advance(None)
        return self.done[request]

    def _advance(self, until: float | None) -> None:
        """Serve until ``until`` (None: until the next request is served)."""
        if until is not None and until < self.now - 1e-9:
            raise ValueError(f"a request at {until} us arrives after the DRAM served up to {self.now} us")
        while self.left:
            rate = self.bandwidth / len(self.left)
            smallest = min(self.left, key=self.left.get)
            finish = self.now + max(self.left[smallest], 0.0) / rate
            if until is not None and finish > until:
                for request in self.left:
                    self.left[request] -= (until - self.now) * rate
                break
            served = self.left.pop(smallest)
            for request in self.left:
                self.left[request] -= served
            self.done[smallest] = self.now = finish
            if until is None:
                return
        if until is not None:
            self.now = max(self.now, until)


def simulate(stages: list[Stage], bandwidth: float, l2_room: float = float("inf")) -> list[tuple[float, float]]:
    """(start, end) of every stage, in µs from the first one's launch; ``bandwidth`` in bytes
    per µs. ``l2_room``: the prefetched bytes L2 may hold that no K loop has read yet."""
    dram = Dram(bandwidth)
    prefetches: dict[int, int] = {}
    resident: dict[int, float] = {}  # placed stages still holding their room: occupancy
    waiting: dict[int, float] = {}  # placed stages whose K loop has not read their prefetch yet: bytes
    spans = []
    end = 0.0

    def place(at: float, upto: int) -> None:
        """Place the stages after the placed ones, in order, while they are early and fit (stage
        ``upto`` and those before it regardless: their predecessor has ended)."""
        index = max(prefetches, default=-1) + 1
        while index < len(stages):
            stage = stages[index]
            fits = (sum(resident.values()) + stage.occupancy <= 1.0
                    and sum(waiting.values()) + stage.prefetch_bytes <= l2_room)
            if index > upto and not (stage.early and stages[index - 1].triggers and fits):
                return
            prefetches[index] = dram.ask(at, stage.prefetch_bytes)
            resident[index], waiting[index] = stage.occupancy, stage.prefetch_bytes
            index += 1

    for index, stage in enumerate(stages):
        start = end + stage.boundary
        place(end if stage.early else start, index)  # at the latest when the one before ends (or it starts)
        place(start, index)
        loop_end = start + stage.pre + stage.fill + stage.prefetched_loop()
        if stage.stream_bytes:
            stream = dram.ask(start + stage.pre, max(stage.stream_bytes - stage.prefetch_bytes, 0.0))
            ready = max(dram.finished(stream), dram.finished(prefetches[index]))
            loop_end = max(loop_end, ready + stage.fill)
        del resident[index], waiting[index]  # its programs other than each tile's last exit
        place(loop_end, index)
        end = max(loop_end + stage.tail, start + stage.floor)
        spans.append((start, end))
    return spans
