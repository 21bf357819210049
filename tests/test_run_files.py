"""Nothing lost: a run writes partial files beside its outputs and moves them into place at
the end, holds a lock on its outputs while it runs, and leaves earlier results alone when it
is killed or fails (``gpt2fast.outputs``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpt2fast
from gpt2fast.cli import main
from gpt2fast.errors import InputError
from gpt2fast.outputs import exclusive_outputs, is_locked, lock_path

LONG_RUN = 200_000  # iterations of the tiny model: far more than the tests wait for


def start_cli(checkpoint: Path, folder: Path, *flags: str, prompt: str = "a b c") -> subprocess.Popen:
    """``python -m gpt2fast`` on the tiny checkpoint in ``folder`` (CPU, torch backend)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, "-m", "gpt2fast", "--weights", str(checkpoint), "--prompt", prompt,
                             "--backend", "torch", *flags], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def first_chunk_written(path: Path) -> bool:
    """Whether the partial err file holds its first flushed chunk (values, not NaN)."""
    try:
        return bool(np.isfinite(np.load(path, mmap_mode="r")[0, 0]).all())
    except (OSError, ValueError):
        return False


def test_a_killed_run_leaves_the_earlier_results_and_recognisable_partial_ones(tiny_checkpoint, tmp_path):
    assert start_cli(tiny_checkpoint, tmp_path, "--size", "3").wait(timeout=300) == 0
    earlier = {name: (tmp_path / name).read_bytes() for name in ("Eplot.npy", "Eplot.json")}
    run = start_cli(tiny_checkpoint, tmp_path, "--size", str(LONG_RUN))
    wait_for(lambda: first_chunk_written(tmp_path / "Eplot.partial.npy"))
    assert is_locked(tmp_path / "Eplot.npy")
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert {name: (tmp_path / name).read_bytes() for name in earlier} == earlier
    partial = np.load(tmp_path / "Eplot.partial.npy")
    assert partial.shape == (1, 2 * LONG_RUN, 2)
    assert np.isfinite(partial[0, :256]).all() and np.isnan(partial[0, -1]).all()
    meta = json.loads((tmp_path / "Eplot.partial.json").read_text())
    assert meta["status"] == "running" and meta["pid"] == run.pid
    assert not is_locked(tmp_path / "Eplot.npy")  # the reader's way to tell the run is gone
    assert start_cli(tiny_checkpoint, tmp_path, "--size", "2").wait(timeout=300) == 0  # the lock is free
    assert np.load(tmp_path / "Eplot.npy").shape == (1, 4, 2)
    assert not (tmp_path / "Eplot.partial.npy").exists() and not lock_path(tmp_path / "Eplot.npy").exists()


def test_ctrl_c_while_err2_is_written_after_the_last_iteration(tiny_checkpoint, tmp_path):
    """err2 of one chunk (T = 256, N = 1024: 0.5 GB) is written after the last iteration,
    under ``m.partial.npy.tmp`` until complete. A Ctrl-C then has nothing left to stop: the
    run completes (status 0, "complete"). A second Ctrl-C ends the process at once: err2
    exists only under the temporary name, the earlier m.npy is untouched, and the next run
    removes the temporary."""
    flags = ("--size", "1024", "--matrixerror", "m")
    temporary, prompt = tmp_path / "m.partial.npy.tmp", " ".join(["word"] * 256)
    for signals in (1, 2):
        run = start_cli(tiny_checkpoint, tmp_path, *flags, prompt=prompt)
        wait_for(temporary.exists)
        for _ in range(signals):
            run.send_signal(signal.SIGINT)
            time.sleep(0.3)  # the first signal's handler runs within 0.1 s, while the writer works
        status = run.wait(timeout=120)
        if signals == 1:
            assert status == 0, run.stderr.read()
            assert json.loads((tmp_path / "m.json").read_text())["status"] == "complete"
            assert np.isfinite(np.load(tmp_path / "m.npy", mmap_mode="r")[0, :, :, -1]).all()
            earlier = os.stat(tmp_path / "m.npy").st_ino
        else:
            assert status == -signal.SIGINT
            assert temporary.exists() and not (tmp_path / "m.partial.npy").exists()
            assert os.stat(tmp_path / "m.npy").st_ino == earlier
    assert start_cli(tiny_checkpoint, tmp_path, "--size", "2", "--matrixerror", "m").wait(timeout=300) == 0
    assert not temporary.exists() and np.load(tmp_path / "m.npy").shape == (1, 3, 3, 4)


def test_a_killed_run_of_several_chunks_leaves_err2_only_under_its_temporary_name(tiny_checkpoint, tmp_path):
    """err2 larger than the staging (T = 64, N = 20000: 655 MB through a 32 MiB staging, ~500
    iterations a chunk) is filled chunk by chunk as a sparse file under ``m.partial.npy.tmp``:
    killed, the run leaves no ``m.partial.npy`` (its unwritten steps would read as zeros, not
    NaN), the temporary holds the chunks written, and the next run removes it."""
    temporary, prompt = tmp_path / "m.partial.npy.tmp", " ".join(["word"] * 64)
    run = start_cli(tiny_checkpoint, tmp_path, "--size", "20000", "--matrixerror", "m", "--memory-budget", "64MiB",
                    prompt=prompt)
    wait_for(temporary.exists)
    wait_for(lambda: np.load(temporary, mmap_mode="r")[0, 0, 0, 0] != 0)  # the first chunk's rows are going in
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert not (tmp_path / "m.partial.npy").exists() and not (tmp_path / "m.npy").exists()
    assert np.load(temporary, mmap_mode="r").shape == (1, 64, 64, 40000)
    assert start_cli(tiny_checkpoint, tmp_path, "--size", "2", "--matrixerror", "m").wait(timeout=300) == 0
    assert not temporary.exists() and np.load(tmp_path / "m.npy").shape == (1, 3, 3, 4)


def test_a_stop_before_the_first_iteration_leaves_err2_all_nan(tiny_checkpoint, tmp_path, monkeypatch):
    """A run whose err2 fits in one chunk has the writer make err2; stopped before the engine
    ran (Ctrl-C while the files were being made), it still gets an err2 of NaN and moves it
    into place like err, with exit status 130."""
    from gpt2fast.distributed import Team

    monkeypatch.setattr(Team, "barrier", lambda team: os.kill(os.getpid(), signal.SIGINT))  # right after the files
    result = gpt2fast.consensus("a b c", weights=tiny_checkpoint, size=4, backend="torch", progress=False,
                                savefile=tmp_path / "E", matrixerror=tmp_path / "m")
    assert result.exit_status == 128 + signal.SIGINT and result.metadata["status"] == "interrupted"
    assert result.metadata["ranks"][0]["batches"][0]["status"] == "pending"
    assert result.err2.shape == (1, 3, 3, 8) and np.isnan(result.err2).all() and np.isnan(result.err).all()
    assert not list(tmp_path.glob("*.partial.*")) and not list(tmp_path.glob("*.tmp"))


def test_a_second_run_on_the_same_outputs_is_refused_at_once(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    run = start_cli(tiny_checkpoint, tmp_path, "--size", str(LONG_RUN), "--matrixerror", "m")
    try:
        wait_for(lambda: (tmp_path / "Eplot.partial.json").exists())
        monkeypatch.chdir(tmp_path)
        started = time.monotonic()
        status = main(["--weights", str(tiny_checkpoint), "--size", "1", "--prompt", "x", "--savefile", "other",
                       "--matrixerror", "m"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and time.monotonic() - started < 5
        assert lines[0].startswith(f"gpt2fast: error: another gpt2fast run (pid {run.pid}) is writing m.npy")
        assert not (tmp_path / "other.npy").exists() and not (tmp_path / "other.partial.npy").exists()
        assert run.poll() is None
    finally:
        run.send_signal(signal.SIGINT)  # a graceful stop: its partial results move into place
        assert run.wait(timeout=120) == 128 + signal.SIGINT
    meta = json.loads((tmp_path / "Eplot.json").read_text())
    assert meta["status"] == "interrupted" and meta == json.loads((tmp_path / "m.json").read_text())
    assert not (tmp_path / "Eplot.partial.npy").exists()


def test_exclusive_outputs_in_one_process(tmp_path):
    target = tmp_path / "E.npy"
    with exclusive_outputs([target]):
        assert is_locked(target)
        with pytest.raises(InputError, match=rf"another gpt2fast run \(pid {os.getpid()}\) is writing"):
            with exclusive_outputs([tmp_path / "F.npy", target]):
                pass
        assert not lock_path(tmp_path / "F.npy").exists()
    assert not is_locked(target) and not lock_path(target).exists()


def test_earlier_results_mapped_in_a_notebook_stay_valid(tiny_checkpoint, tmp_path, monkeypatch):
    """The same call twice with another size: the first result still reads its own numbers
    (the second run's files replaced the names, not the first's data)."""
    monkeypatch.chdir(tmp_path)
    common = dict(prompts="a b c", weights=str(tiny_checkpoint), backend="torch", progress=False,
                  savefile="E", matrixerror="M")
    first = gpt2fast.consensus(size=2, **common)
    before = (np.array(first.err), np.array(first.err2), first.metadata["flags"]["size"])
    second = gpt2fast.consensus(size=3, seed=1, **common)
    assert np.array_equal(first.err, before[0]) and np.array_equal(first.err2, before[1], equal_nan=True)
    assert first.err.shape[1] == 2 * 2 and second.err.shape[1] == 2 * 3
    assert json.loads(Path("E.json").read_text())["flags"]["size"] == 3 == second.metadata["flags"]["size"]


@pytest.mark.parametrize("make, message", [
    (lambda folder: os.link(folder / "E.npy", folder / "M.npy"), "--matrixerror and --savefile both name"),
    (lambda folder: os.mkfifo(folder / "M.npy"), "M.npy exists and is not a regular file"),
    (lambda folder: (folder / "M.npy").symlink_to("/dev/null"), "M.npy exists and is not a regular file"),
    (lambda folder: (folder / "M.json").mkdir(), "M.json is a directory"),
    (lambda folder: (folder / "E.partial.json.tmp").mkdir(), "E.partial.json.tmp is a directory"),
    (lambda folder: (folder / ".E.npy.lock").mkdir(), ".E.npy.lock is a directory"),
    (lambda folder: os.mkfifo(folder / ".M.npy.lock"), ".M.npy.lock exists and is not a regular file"),
    (lambda folder: (folder / ".E.npy.lock").symlink_to(folder / "E.npy"), "lock file"),
    (lambda folder: os.link(folder / "E.npy", folder / ".M.npy.lock"), "lock file"),
], ids=["hard-linked outputs", "fifo", "device", "metadata directory", "temporary metadata directory",
        "lock directory", "lock fifo", "lock symlink", "lock hard link"])
def test_outputs_that_are_not_plain_files_are_refused_before_work(tiny_checkpoint, tmp_path, capsys, make, message):
    """One line, exit 2, at once, nothing touched (the CLI, in process)."""
    (tmp_path / "E.npy").write_bytes(b"earlier")
    make(tmp_path)
    before = sorted(os.listdir(tmp_path))
    status = main(["--weights", str(tiny_checkpoint), "--size", "1", "--prompt", "a b",
                   "--savefile", str(tmp_path / "E"), "--matrixerror", str(tmp_path / "M")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("gpt2fast: error:") and message in lines[0]
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "E.npy").read_bytes() == b"earlier"


@pytest.mark.parametrize("planted", ["Eplot.partial.npy", "Eplot.partial.json", "Eplot.partial.json.tmp",
                                     "m.partial.npy"])
@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_links_at_the_partial_names_are_replaced_not_written_through(tiny_checkpoint, tmp_path, planted, link):
    """A link a killed run (or anyone) left at a partial name is removed: the file it points
    to keeps its bytes, and the run's results land at their own names."""
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"keep me")
    (os.symlink if link == "symlink" else os.link)(precious, tmp_path / planted)
    assert main(["--weights", str(tiny_checkpoint), "--size", "2", "--prompt", "a b", "--matrixerror", "m"]) == 0
    assert precious.read_bytes() == b"keep me"
    assert np.load(tmp_path / "Eplot.npy").shape == (1, 4, 2) and np.load(tmp_path / "m.npy").shape == (1, 2, 2, 4)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["Eplot.json", "Eplot.npy", "m.json", "m.npy",
                                                               "precious.txt"]


@pytest.mark.parametrize("flags, message", [
    (["--savefile", "E.partial"], "--savefile: names ending in .partial are kept"),
    (["--matrixerror", "dir/M.partial.npy"], "--matrixerror: names ending in .partial are kept"),
    (["--savefile", "/"], "'/' names a directory"),
    (["--savefile", "."], "'.' names a directory"),
    (["--savefile", "out/"], "'out/' names a directory"),
    (["--savefile", "x" * 248], "is too long for the files written with it"),
    (["--matrixerror", "m" * 250 + ".npy"], "is too long"),
])
def test_output_names_that_collide_or_cannot_be_written_are_refused(tiny_checkpoint, tmp_path, capsys, flags,
                                                                   message):
    (tmp_path / "out").mkdir()
    (tmp_path / "dir").mkdir()
    status = main(["--weights", str(tiny_checkpoint), "--size", "1", "--prompt", "a b", *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and message in lines[0], lines
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dir", "out"]


def test_a_lock_file_replaced_while_being_locked_is_locked_again(tmp_path, monkeypatch):
    """A finishing run unlinks its lock file: a lock taken on the unlinked file would let two
    runs in at once, so open_lock locks the file now at the path."""
    import fcntl

    from gpt2fast import outputs

    target = tmp_path / "E.npy"
    real_flock, replaced = fcntl.flock, []

    def flock_after_the_holder_left(fd, operation):
        if not replaced:  # between our open and our flock, the holder unlinks the file and another run creates it
            outputs.lock_path(target).unlink()
            outputs.lock_path(target).write_text("pid 1")
            replaced.append(True)
        return real_flock(fd, operation)

    monkeypatch.setattr(outputs.fcntl, "flock", flock_after_the_holder_left)
    fd = outputs.open_lock(target)
    try:
        assert os.fstat(fd).st_ino == os.stat(outputs.lock_path(target)).st_ino and replaced
    finally:
        os.close(fd)
