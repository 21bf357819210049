"""err2 a user can afford: every K-th step only (``matrix_every``), float16 (``matrix_dtype``);
shapes, step indices, values, the disk check, reading back and plotting."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple

import numpy as np
import pytest

import gpt2fast
from gpt2fast import validation
from gpt2fast.cli import main
from gpt2fast.errors import InputError
from gpt2fast.plot import consensus_figure

PROMPTS = ["a b c d e", "x y"]
SIZE = 5  # 10 steps of the tiny model (L = 2)


@pytest.fixture(scope="module")
def full(tiny_checkpoint):
    return gpt2fast.consensus(PROMPTS, weights=tiny_checkpoint, size=SIZE, matrix=True, backend="torch",
                              progress=False)


@pytest.mark.parametrize("every", [1, 2, 3, 4, 10, 11, 1000])
def test_every_kth_step_is_a_slice_of_the_full_err2(tiny_checkpoint, tmp_path, full, every):
    thinned = gpt2fast.consensus(PROMPTS, weights=tiny_checkpoint, size=SIZE, savefile=tmp_path / "E",
                                 matrixerror=tmp_path / "m", matrix_every=every, backend="torch", progress=False)
    steps = list(range(0, 2 * SIZE, every))
    assert thinned.err2.shape == (2, 5, 5, len(steps)) and thinned.err2.dtype == np.float32
    np.testing.assert_allclose(thinned.err2, full.err2[..., ::every], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(thinned.err, full.err, rtol=1e-6, atol=1e-7)  # err keeps every step
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["flags"]["matrix_every"] == every and written["files"]["err2"]["every"] == every
    assert written["files"]["err2"].get("steps", list(range(2 * SIZE))) == steps
    assert thinned.err2_steps.tolist() == steps
    again = gpt2fast.load_result(tmp_path / "E", tmp_path / "m")
    assert again.err2.shape == thinned.err2.shape and again.err2_steps.tolist() == steps


def test_float16_holds_the_float32_values_rounded(tiny_checkpoint, tmp_path, full):
    half = gpt2fast.consensus(PROMPTS, weights=tiny_checkpoint, size=SIZE, savefile=tmp_path / "E",
                              matrixerror=tmp_path / "m", matrix_dtype="float16", matrix_every=3, backend="torch",
                              progress=False)
    assert half.err2.dtype == np.float16 and half.err.dtype == np.float32
    reference = full.err2[..., ::3]
    assert np.array_equal(np.isnan(half.err2), np.isnan(reference))
    np.testing.assert_allclose(half.err2.astype(np.float32), reference, rtol=2**-11, atol=2**-24)
    assert not np.array_equal(half.err2.astype(np.float32), reference)  # rounded, not exact
    loaded = gpt2fast.load_result(tmp_path / "E", tmp_path / "m")
    assert loaded.err2.dtype == np.float16 and loaded.err2_steps.tolist() == [0, 3, 6, 9]
    figure = consensus_figure(loaded)
    assert [ax.get_title() for ax in figure.axes if ax.get_title().startswith("G at step")] == [
        "G at step 0 (iteration 0, layer 0)", "G at step 3 (iteration 1, layer 1)",
        "G at step 9 (iteration 4, layer 1)"]
    with pytest.raises(ValueError, match="step 4 is not in err2, which holds every 3th step"):
        consensus_figure(loaded, steps=[4])


def test_the_disk_check_counts_the_thinned_bytes(tiny_checkpoint, tmp_path, monkeypatch):
    """A disk with room for a quarter of the full err2 (float32, every step) takes it thinned
    to every 4th step in float16 (an eighth), and refuses it whole."""
    full_bytes = 4 * 2 * 5 * 5 * 2 * SIZE * 100
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, 0, full_bytes // 4))
    common = dict(weights=tiny_checkpoint, size=100 * SIZE, savefile=tmp_path / "E", matrixerror=tmp_path / "m",
                  backend="torch", progress=False)
    with pytest.raises(InputError, match="refusing to start: the output files need"):
        gpt2fast.consensus(PROMPTS, **common)
    result = gpt2fast.consensus(PROMPTS, matrix_every=4, matrix_dtype="float16", **common)
    assert result.err2.shape == (2, 5, 5, 250) and result.err2.nbytes == full_bytes // 8


@pytest.mark.parametrize("flags,message", [
    (["--matrixerror", "m", "--matrix-every", "0"], "--matrix-every must be at least 1, got 0"),
    (["--matrixerror", "m", "--matrix-dtype", "float64"], "argument --matrix-dtype: invalid choice"),
    (["--matrix-every", "2"], "--matrix-every and --matrix-dtype shape err2, which this run does not record"),
    (["--matrix-dtype", "float16"], "--matrix-every and --matrix-dtype shape err2"),
])
def test_bad_matrix_formats_are_one_line(flags, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--weights", "random", "--prompt", "x", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpt2fast: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_the_api_refuses_a_dtype_that_is_not_a_name(tiny_checkpoint):
    with pytest.raises(InputError, match=r"matrix_dtype must be one of float32, float16, got <class 'numpy.float16'>"):
        gpt2fast.consensus("x", weights=tiny_checkpoint, size=1, matrix=True, matrix_dtype=np.float16)
    with pytest.raises(InputError, match="matrix_every must be an integer, got 2.0"):
        gpt2fast.consensus("x", weights=tiny_checkpoint, size=1, matrix=True, matrix_every=2.0)
    assert validation.check_matrix_format(3, "float16", True, validation.parameter) == (3, "float16")


def test_the_plan_gives_the_sizes_the_run_then_writes_and_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--weights", str(tiny_checkpoint), "--size", "40", "--prompt", "a b c d e", "--prompt", "x y",
             "--matrixerror", "m", "--matrix-every", "3", "--matrix-dtype", "float16", "--backend", "torch"]
    assert main([*flags, "--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert list(tmp_path.iterdir()) == []
    assert lines[:3] == ["outputs:", "  err   Eplot.npy  (2, 80, 2) float32  1.2 KiB",
                         "  err2  m.npy  (2, 5, 5, 27) float16  2.6 KiB"]
    assert lines[3].startswith("memory: host ") and lines[4] == "batches: 1 (all prompts at once)"
    assert lines[5] == "err2 staging: one chunk, written as whole rows after the last iteration"
    assert lines[6].startswith("time: at least ") and "for 40 iterations" in lines[6]
    assert main(flags) == 0
    assert np.load("m.npy").nbytes == 2 * 5 * 5 * 27 * 2 and np.load("Eplot.npy").nbytes == 2 * 80 * 2 * 4


def test_a_plan_too_large_for_the_disk_says_so(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, 0, 1 << 20))
    assert main(["--weights", str(tiny_checkpoint), "--size", "10000000", "--prompt", "a b c d e",
                 "--matrixerror", "m", "--memory-budget", "64MiB", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "  err2  m.npy  (1, 5, 5, 20000000) float32  1.9 GiB" in out
    # staging: half the budget, two slots of c iterations of 4 bytes x 2 layers x (2 + 5 x 5)
    assert ("err2 staging: chunks of 77672 iterations, each adding 606.8 KiB to every row "
            "(short runs write slowly: a larger --memory-budget makes them longer)") in out
    assert ("as it stands the run would not start: refusing to start: the output files need 2.0 GiB but "
            f"{tmp_path.resolve()} has 1.0 MiB free") in out
    assert list(tmp_path.iterdir()) == []
