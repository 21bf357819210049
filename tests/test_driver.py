"""The C++ loop driver on the CPU: chunking, the writer's layouts, stops, failures, memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from gpt2fast import _driver
from gpt2fast.backends.torch_backend import TorchEngine
from gpt2fast.driver import FileLayout, create_files, drive, memory_outputs
from gpt2fast.memory import STAGING_BYTES, chunk_iterations
from gpt2fast.interrupts import StopRequest
from gpt2fast.weight_stream import WeightStream
from tiny_models import tiny_config, tiny_state

CFG = tiny_config()
STATE = tiny_state(CFG, seed=2)
PROMPTS = [[464, 2068, 7586, 21831, 18045], [50256, 11, 13]]


def engine_for(token_lists=PROMPTS, device="cpu"):
    stream = WeightStream(CFG, STATE, seed=0, random_init=False, const_reset=False,
                          device=torch.device(device), dtype=torch.float32)
    return TorchEngine(stream, token_lists, noff=False)


def plain_loop(n_iterations, token_lists=PROMPTS, decode_iterations=()):
    """The same engine driven by an obvious Python loop, arrays built in memory."""
    engine = engine_for(token_lists)
    n_prompts, length, layers = engine.n_prompts, engine.length, CFG.n_layer
    err = np.full((n_prompts, layers * n_iterations, 2), np.nan, np.float32)
    gram = np.full((n_prompts, length, length, layers * n_iterations), np.nan, np.float32)
    decoded = {}
    for i in range(n_iterations):
        err_i = torch.empty(n_prompts, layers, 2)
        gram_i = torch.empty(n_prompts, layers, length, length)
        engine.iteration(i, err_i, gram_i)
        err[:, i * layers : (i + 1) * layers] = err_i.numpy()
        gram[..., i * layers : (i + 1) * layers] = gram_i.permute(0, 2, 3, 1).numpy()
        if i in decode_iterations:
            decoded[i] = engine.decode(i)
    return err, gram, decoded


@pytest.mark.parametrize("n_iterations,chunk", [(1, 4), (5, 2), (7, 3), (6, 6), (4, 1)])
def test_driver_writes_what_the_plain_loop_computes(tmp_path, n_iterations, chunk):
    decodes = frozenset({0, n_iterations - 1})
    decoded = {}
    progress = []
    done = drive(engine_for(), n_iterations, tmp_path / "e.npy", tmp_path / "g.npy",
                 decode_iterations=decodes, on_decode=decoded.__setitem__,
                 on_progress=progress.append, chunk=chunk)
    assert done == n_iterations
    assert progress == list(range(1, n_iterations + 1))
    want_err, want_gram, want_decoded = plain_loop(n_iterations, decode_iterations=decodes)
    # Bit for bit: the same engine's operations in the same order, on the same thread; only the
    # driving and the writing differ.
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), want_err)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), want_gram)
    assert sorted(decoded) == sorted(decodes)
    for i in decodes:
        assert torch.equal(decoded[i], want_decoded[i])


class SlowEngine:
    """engine_for()'s engine, each iteration taking at least ``seconds``."""

    def __init__(self, seconds: float):
        self.engine, self.seconds = engine_for(), seconds
        self.n_prompts, self.n_layer, self.length = self.engine.n_prompts, CFG.n_layer, self.engine.length

    def iteration(self, index, err_out, gram_out):
        time.sleep(self.seconds)
        self.engine.iteration(index, err_out, gram_out)

    def capture_iteration(self, with_gram, n_iterations):
        return None


@pytest.mark.parametrize("flush_seconds, flushed", [(0.2, True), (1e9, False)])
def test_slow_iterations_reach_the_file_within_the_flush_interval(tmp_path, flush_seconds, flushed):
    """A 256-iteration chunk of slow iterations is written flush_seconds after it began (so a
    killed run loses only the last seconds), not only when full or at the end."""
    seen = {}

    def look(completed: int) -> None:
        if completed == 12:  # 0.6 s into the run
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not np.isfinite(np.load(tmp_path / "e.npy")[:, :2]).all():
                time.sleep(0.05)
            seen["first rows"] = bool(np.isfinite(np.load(tmp_path / "e.npy")[:, :2]).all())

    done = drive(SlowEngine(0.05), 15, tmp_path / "e.npy", tmp_path / "g.npy", on_progress=look, chunk=256,
                 flush_seconds=flush_seconds)
    assert done == 15 and seen == {"first rows": flushed}
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), plain_loop(15)[0])


def test_err_only_run_writes_no_matrix_file(tmp_path):
    """Without err2 the engine never forms G (metrics.consensus_metrics), so err equals the
    full run's to float32 rounding rather than bit for bit."""
    assert drive(engine_for(), 3, tmp_path / "e.npy", None, chunk=2) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy"]
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), plain_loop(3)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("chunk", [3, 5, None])  # None: the whole run is one chunk, err2 made at its one write
def test_stop_request_ends_at_the_next_iteration(tmp_path, chunk, every, dtype):
    """err2 the writer makes: one chunk writes whole rows, NaN past the stop; chunks of 3 (the
    stop inside the second) and of 5 (the stop at a boundary) fill a sparse file and then
    write NaN over the steps the stop left out, thinned and in float16 alike."""
    stop = StopRequest()

    def progress(done):
        if done == 5:
            stop.request(2)

    engine = engine_for()
    place = FileLayout((0, 1), 2, engine.length, every, dtype, gram_at_write=True)
    create_files(tmp_path / "e.npy", tmp_path / "g.npy", place, 50 * CFG.n_layer)
    done = drive(engine, 50, tmp_path / "e.npy", tmp_path / "g.npy", on_progress=progress,
                 stop=stop, chunk=chunk, place=place)
    assert done == 5
    err, gram = np.load(tmp_path / "e.npy"), np.load(tmp_path / "g.npy")
    want_err, want_gram, _ = plain_loop(5)
    steps = 5 * CFG.n_layer
    recorded = -(-steps // every)
    assert gram.shape == (2, 5, 5, -(-50 * CFG.n_layer // every)) and gram.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(err[:, :steps], want_err)
    np.testing.assert_array_equal(gram[..., :recorded], want_gram[..., ::every].astype(dtype))
    assert np.isnan(err[:, steps:]).all() and np.isnan(gram[..., recorded:]).all()
    assert not (tmp_path / "g.npy.tmp").exists()


def test_files_hold_nan_before_any_iteration(tmp_path):
    create_files(tmp_path / "e.npy", tmp_path / "g.npy", FileLayout((0, 1), 2, 4), 15)
    driver = _driver.Driver(2, 3, 4, 5, 2, str(tmp_path / "e.npy"), str(tmp_path / "g.npy"), 5.0, [0, 1], 2, 4)
    driver.finish()
    err, gram = np.load(tmp_path / "e.npy"), np.load(tmp_path / "g.npy")
    assert err.shape == (2, 15, 2) and gram.shape == (2, 4, 4, 15)
    assert err.dtype == gram.dtype == np.float32 and np.isnan(err).all() and np.isnan(gram).all()


@pytest.mark.parametrize("n_iterations,chunk", [(4, 4), (5, 2)])
def test_prompts_land_at_their_rows_of_longer_files(tmp_path, n_iterations, chunk):
    """Batches (or ranks) write their prompts into rows of files padded to a longer T: every
    cell equals the one-engine run's, and the rest stays NaN (whole-prompt and per-cell writes)."""
    steps = n_iterations * CFG.n_layer
    create_files(tmp_path / "e.npy", tmp_path / "g.npy", FileLayout((3, 1), 5, 7), steps)
    place = FileLayout(rows=(3, 1), prompts=5, length=7)
    assert drive(engine_for(), n_iterations, tmp_path / "e.npy", tmp_path / "g.npy", chunk=chunk, place=place) == n_iterations
    err, gram = np.load(tmp_path / "e.npy"), np.load(tmp_path / "g.npy")
    want_err, want_gram, _ = plain_loop(n_iterations)
    for prompt, row in enumerate(place.rows):
        np.testing.assert_array_equal(err[row], want_err[prompt])
        np.testing.assert_array_equal(gram[row, :5, :5], want_gram[prompt])
        assert np.isnan(gram[row, 5:]).all() and np.isnan(gram[row, :, 5:]).all()
    assert np.isnan(err[[0, 2, 4]]).all() and np.isnan(gram[[0, 2, 4]]).all()


class NoiseEngine:
    """Two prompts of ``length`` tokens whose iteration i writes G_i = a fixed draw per i (and
    err = i): the writer's layout at sizes the tiny model would take minutes to fill. With
    ``constant``, one prompt whose G_i is i everywhere (the writer's speed and memory)."""

    backend = "synthetic"

    def __init__(self, length: int, constant: bool = False):
        self.n_prompts, self.n_layer, self.length, self.constant = 1 if constant else 2, CFG.n_layer, length, constant

    def grams(self, index: int) -> np.ndarray:
        shape = (self.n_prompts, self.n_layer, self.length, self.length)
        return np.random.default_rng(index).standard_normal(shape, np.float32)

    def iteration(self, index: int, err: torch.Tensor, gram: torch.Tensor | None) -> None:
        err.fill_(index)
        if gram is not None and self.constant:
            gram.fill_(index)
        elif gram is not None:
            gram.copy_(torch.from_numpy(self.grams(index)))

    def capture_iteration(self, wants_gram: bool, n_iterations: int) -> None:
        return None


@pytest.mark.parametrize("length,file_length,chunk", [(64, 64, 150), (64, 67, 150), (128, 128, 40), (128, 131, 40)])
def test_err2_pieces_and_chunks_hold_a_numpy_transpose(tmp_path, length, file_length, chunk):
    """The writer transposes a chunk in pieces of 2**20 floats shared by its two threads: runs
    whose chunk (one of 150 iterations: whole rows; chunks of 40: a run per cell) spans
    several pieces per prompt, in files of the run's T (err2 made by the writer: sparse, under
    its temporary name) and of a longer one (NaN-filled first, as for batches), hold exactly
    NumPy's transpose of the staged matrices, every piece and chunk boundary included."""
    engine, iterations = NoiseEngine(length), 150
    steps = iterations * engine.n_layer
    place = FileLayout((1, 0), 2, file_length, gram_at_write=file_length == length)
    create_files(tmp_path / "e.npy", tmp_path / "g.npy", place, steps)
    assert length * length * (chunk * engine.n_layer if chunk < iterations else steps) > 2**20  # pieces per prompt >= 2
    assert drive(engine, iterations, tmp_path / "e.npy", tmp_path / "g.npy", chunk=chunk, place=place) == iterations
    staged = np.stack([engine.grams(i) for i in range(iterations)])  # [N, P, L, T, T]
    want = staged.transpose(1, 3, 4, 0, 2).reshape(2, length, length, steps)
    gram = np.load(tmp_path / "g.npy", mmap_mode="r")
    np.testing.assert_array_equal(gram[1, :length, :length], want[0])
    np.testing.assert_array_equal(gram[0, :length, :length], want[1])
    assert np.isnan(gram[:, length:]).all() and np.isnan(gram[:, :, length:]).all()


@pytest.mark.parametrize("every,chunk", [(1, 3), (3, 2), (4, 3), (5, 1), (6, 7), (15, 2), (100, 4)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("at_write", [False, True])
def test_thinned_err2_holds_every_kth_step(tmp_path, every, chunk, dtype, at_write):
    """err2 with G after steps 0, K, 2K, ... only (K beyond L·N: step 0 alone), in float32 or
    float16: a NumPy slice of the full array, across chunk boundaries (K·L's multiples and not),
    in a NaN-filled file and in one the writer makes."""
    steps = 7 * CFG.n_layer
    place = FileLayout((0, 1), 2, 5, every, dtype, gram_at_write=at_write)
    create_files(tmp_path / "e.npy", tmp_path / "g.npy", place, steps)
    assert drive(engine_for(), 7, tmp_path / "e.npy", tmp_path / "g.npy", chunk=chunk, place=place) == 7
    want_err, want_gram, _ = plain_loop(7)
    gram = np.load(tmp_path / "g.npy")
    assert gram.dtype == np.dtype(dtype) and gram.shape == (2, 5, 5, -(-steps // every))
    np.testing.assert_array_equal(gram, want_gram[..., ::every].astype(dtype))
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), want_err)


class StepEngine:
    """One prompt of 2 tokens, 64 layers, whose every G entry after step s is s (exact in
    float32 up to 2**24): rows longer than the writer's 2**20-float pieces."""

    backend = "synthetic"
    n_prompts, n_layer, length = 1, 64, 2

    def iteration(self, index: int, err: torch.Tensor, gram: torch.Tensor | None) -> None:
        err.fill_(index)
        gram.copy_(torch.arange(index * 64, index * 64 + 64, dtype=torch.float32).view(1, 64, 1, 1).expand_as(gram))

    def capture_iteration(self, wants_gram: bool, n_iterations: int) -> None:
        return None


@pytest.mark.parametrize("chunk", [None, 11000])
def test_rows_longer_than_a_piece(tmp_path, chunk):
    """1.92 million steps per row (one chunk: whole rows of one cell per piece; chunks of 11000
    iterations and a stop: each chunk's runs, then the NaN tail) exceed the 2**20 floats of a
    piece (and the 6 MiB its allocation rounds to): the pieces grow to hold them."""
    stop = StopRequest()
    done = drive(StepEngine(), 30000, tmp_path / "e.npy", tmp_path / "g.npy", chunk=chunk, stop=stop,
                 on_progress=lambda done: done == 29000 and stop.request(2))
    assert done == 29000
    gram = np.load(tmp_path / "g.npy")
    assert gram.shape == (1, 2, 2, 1_920_000)
    written = np.arange(1_856_000, dtype=np.float32)
    np.testing.assert_array_equal(gram[..., :1_856_000], np.broadcast_to(written, (1, 2, 2, 1_856_000)))
    assert np.isnan(gram[..., 1_856_000:]).all()


@pytest.mark.parametrize("chunk", [2, None])
def test_arrays_in_memory_receive_what_the_files_would(tmp_path, chunk):
    """err and a thinned float16 err2 as numpy arrays (the API's in-memory results), at rows
    of longer arrays as a batch writes them: equal to the files the same run writes."""
    place = FileLayout((2, 0), 3, 7, 3, "float16")
    steps = 5 * CFG.n_layer
    err, gram = memory_outputs(place, steps, err=True, gram=True)
    assert drive(engine_for(), 5, err, gram, chunk=chunk, place=place) == 5
    create_files(tmp_path / "e.npy", tmp_path / "g.npy", place, steps)
    assert drive(engine_for(), 5, tmp_path / "e.npy", tmp_path / "g.npy", chunk=chunk, place=place) == 5
    np.testing.assert_array_equal(err, np.load(tmp_path / "e.npy"))
    np.testing.assert_array_equal(gram, np.load(tmp_path / "g.npy"))
    assert np.isfinite(gram[2, :5, :5]).all() and np.isnan(gram[1]).all() and np.isnan(err[1]).all()


@pytest.mark.parametrize("gram,message", [
    (np.zeros((2, 4, 4, 15), np.float64), "float32 array"), (np.zeros((2, 4, 4, 14), np.float32), "the file's shape"),
    (np.zeros((2, 4, 15, 4), np.float32).transpose(0, 1, 3, 2), "C-contiguous"), ("read-only", "writable"),
    (3.0, "a path or a numpy array")])
def test_arrays_that_are_not_the_outputs_are_refused(tmp_path, gram, message):
    if isinstance(gram, str):
        gram = np.zeros((2, 4, 4, 15), np.float32)
        gram.flags.writeable = False
    err = np.zeros((2, 15, 2), np.float32)
    with pytest.raises(ValueError, match=message):
        _driver.Driver(2, 3, 4, 5, 2, err, gram, 5.0, [0, 1], 2, 4)


@pytest.mark.parametrize("rows,file_prompts,file_length,message", [
    ([0, 0], 2, 5, "distinct rows"), ([0, 2], 2, 5, "distinct rows"), ([0], 2, 5, "one file row per prompt"),
    ([0, 1], 2, 4, "file_length must be >= length")])
def test_rows_outside_the_files_are_refused(tmp_path, rows, file_prompts, file_length, message):
    with pytest.raises(ValueError, match=message):
        _driver.Driver(2, 3, 5, 2, 2, str(tmp_path / "e.npy"), None, 5.0, rows, file_prompts, file_length)


def test_a_file_of_another_shape_is_refused(tmp_path):
    create_files(tmp_path / "e.npy", None, FileLayout((0, 1, 2), 3, 5), 6)
    with pytest.raises(OSError, match=r"e\.npy is not the array this run created"):
        _driver.Driver(2, 3, 5, 2, 2, str(tmp_path / "e.npy"), None, 5.0, [0, 1], 2, 5)


def test_slots_are_views_of_the_staging_memory(tmp_path):
    create_files(tmp_path / "e.npy", None, FileLayout((0, 1), 2, 4), 15)
    driver = _driver.Driver(2, 3, 4, 5, 2, str(tmp_path / "e.npy"), None, 5.0, [0, 1], 2, 4)
    slot = driver.err_slot(1)
    assert slot.shape == (2, 2, 3, 2) and slot.dtype == np.float32
    assert driver.gram_slot(0) is None
    slot[...] = 7.0
    assert (driver.err_slot(1) == 7.0).all() and not np.shares_memory(driver.err_slot(0), slot)
    driver.finish()


def test_full_disk_is_a_clear_error(tmp_path):
    """A run of one chunk writes err2 under its temporary name (renamed when complete)."""
    (tmp_path / "g.npy.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError, match=r"cannot write .*g\.npy\.tmp: No space left on device"):
        drive(engine_for(), 2, tmp_path / "e.npy", tmp_path / "g.npy")


def test_unwritable_path_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match=r"cannot create .*no-such-dir/e\.npy"):
        drive(engine_for(), 2, tmp_path / "no-such-dir" / "e.npy", None)


SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from gpt2fast.driver import drive
    from test_driver import NoiseEngine
    limit = int(sys.argv[1])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    engine = NoiseEngine(int(sys.argv[2]), constant=True)
    with open("/proc/self/status") as status:
        before = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    try:
        drive(engine, int(sys.argv[3]), Path("e.npy"), Path("g.npy"), staging=int(sys.argv[4]))
    except OSError as error:
        print("OSError:", error)
        sys.exit(3)
    # VmHWM belongs to this program's own address space; ru_maxrss would also count the
    # parent's resident memory at fork time, which Linux carries across execve.
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print("peak_rss_bytes", peak * 1024, "grown_bytes", (peak - before) * 1024)
""")


def run_script(tmp_path, limit, length, iterations, staging=STAGING_BYTES):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    return subprocess.run([sys.executable, str(script), str(limit), str(length), str(iterations), str(staging)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("staging", [STAGING_BYTES, 4096])  # 4096: 1-iteration chunks
def test_write_failure_is_reported(tmp_path, staging):
    """A file-size limit hit by err2, which the writer makes under its temporary name (whole
    rows for a run of one chunk, a sparse file for 1-iteration chunks): one clear OSError
    either way, the temporary removed and the earlier g.npy in place."""
    result = run_script(tmp_path, limit=0, length=16, iterations=3, staging=staging)
    assert result.returncode == 0, result.stderr
    full_size = (tmp_path / "g.npy").stat().st_size
    result = run_script(tmp_path, limit=full_size - 1, length=16, iterations=3, staging=staging)
    assert result.returncode == 3, result.stderr
    assert "cannot create" not in result.stdout
    assert "OSError: cannot size g.npy.tmp: File too large" in result.stdout
    assert not (tmp_path / "g.npy.tmp").exists() and (tmp_path / "g.npy").stat().st_size == full_size


def test_memory_stays_within_the_staging_budget_for_a_larger_matrix_file(tmp_path):
    """A 545 MB err2 file written through a staging budget of 64 MiB (two slots of 32 MiB,
    17 chunks): the process grows by no more than the budget and the writer's two 4 MiB pieces,
    and the file holds every step."""
    length, iterations, budget = 128, 4160, 64 << 20
    result = run_script(tmp_path, limit=0, length=length, iterations=iterations, staging=budget)
    assert result.returncode == 0, result.stderr
    size = (tmp_path / "g.npy").stat().st_size
    assert size > 8 * budget
    grown = int(result.stdout.split("grown_bytes")[1])
    assert grown < budget + (48 << 20), f"grew {grown / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"
    gram = np.load(tmp_path / "g.npy", mmap_mode="r")
    assert gram.shape == (1, length, length, CFG.n_layer * iterations)
    assert np.isfinite(gram[0, :, :, -1]).all() and np.isfinite(gram[0, 100, :, :]).all()


def test_chunks_hold_the_whole_run_when_it_fits_else_two_slots_within_the_budget():
    per_iteration = 4 * 8 * 12 * (2 + 256 * 256)
    assert chunk_iterations(8, 12, 256, True, 50, 50 * per_iteration) == 50  # one slot, one chunk
    assert chunk_iterations(8, 12, 256, True, 51, 50 * per_iteration) == 25  # two slots of 25
    assert chunk_iterations(1, 48, 1024, True, 2000, 1 << 20) == 1  # at least one iteration
    assert chunk_iterations(1, 12, 27, False, 2000) == 2000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_path_matches_the_cpu_path(tmp_path):
    engine = engine_for(device="cuda")
    assert engine.capture_iteration(True, 7) is not None and engine.capture_iteration(True, 1) is None
    engine = engine_for(device="cuda")
    decoded = {}
    assert drive(engine, 7, tmp_path / "e.npy", tmp_path / "g.npy", decode_iterations=frozenset({2}),
                 on_decode=decoded.__setitem__, chunk=3) == 7
    want_err, want_gram, want_decoded = plain_loop(7, decode_iterations={2})
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), want_err, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), want_gram, rtol=1e-4, atol=1e-5)
    # Exact across devices: every position's top two logits (padding rows' included) differ by
    # at least 1e-2 of the largest |logit|, thousands of times the float32 difference.
    assert torch.equal(decoded[2], want_decoded[2])
