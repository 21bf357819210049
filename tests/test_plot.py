"""Figures: the plotted data is the run's data, files are valid images, bad input exits 2."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from matplotlib.image import AxesImage

import gpt2fast
from gpt2fast.cli import main
from gpt2fast.plot import COLOUR_LIMITS, MAX_CURVES, completed_steps, consensus_figure
from gpt2fast.results import ConsensusResult

LAYERS, ITERATIONS, LENGTH = 4, 3, 5
STEPS = LAYERS * ITERATIONS


def synthetic(prompts: int = 2, with_gram: bool = True, metadata: bool = True) -> ConsensusResult:
    """Random curves and matrices with the shapes and metadata of a run; prompt 1 is one
    token shorter (NaN outside its block, as the driver writes)."""
    rng = np.random.default_rng(0)
    err = rng.uniform(0.2, 1.0, (prompts, STEPS, 2)).astype(np.float32)
    err2 = rng.uniform(-1, 1, (prompts, LENGTH, LENGTH, STEPS)).astype(np.float32) if with_gram else None
    if with_gram and prompts > 1:
        err2[1, LENGTH - 1, :, :] = np.nan
        err2[1, :, LENGTH - 1, :] = np.nan
    meta = {
        "model": {"name": "tiny", "n_layer": LAYERS},
        "flags": {"size": ITERATIONS, "noff": True, "random_init": False, "const_reset": False, "seed": 5},
        "weights": {"source": "random(seed=5)"},
        "prompts": [{"text": f"prompt text {p}", "tokens": list(range(10, 10 + LENGTH - p)),
                     "length": LENGTH - p} for p in range(prompts)],
    }
    return ConsensusResult(err=err, err2=err2, metadata=meta if metadata else None)


def images(figure) -> list[AxesImage]:
    return [image for ax in figure.axes for image in ax.get_images()]


def test_curves_plot_every_prompt_and_metric():
    result = synthetic()
    figure = consensus_figure(result)
    for metric in (0, 1):
        lines = figure.axes[metric].get_lines()
        curves = [line for line in lines if len(line.get_ydata()) == STEPS]
        assert len(curves) == 2
        for p, line in enumerate(curves):
            assert np.array_equal(line.get_ydata(), result.err[p, :, metric])
            assert np.array_equal(line.get_xdata(), np.arange(STEPS))
        boundaries = [line for line in lines if len(line.get_xdata()) == 2]
        assert sorted(line.get_xdata()[0] for line in boundaries) == [LAYERS, 2 * LAYERS]
    assert "tiny" in figure._suptitle.get_text() and "--noff" in figure._suptitle.get_text()


def test_within_iteration_view_shows_each_layer_of_the_chosen_iterations():
    result = synthetic()
    figure = consensus_figure(result, prompt=1)
    lines = figure.axes[2].get_lines()
    assert [line.get_label() for line in lines] == ["iteration 0", "iteration 1", "iteration 2"]
    for iteration, line in enumerate(lines):
        assert np.array_equal(line.get_ydata(), result.err[1, iteration * LAYERS:(iteration + 1) * LAYERS, 0])


def test_heatmaps_show_the_prompts_own_block_on_one_colour_scale():
    result = synthetic()
    figure = consensus_figure(result, steps=[0, 7], prompt=1)
    shown = images(figure)
    assert len(shown) == 2
    for image, step in zip(shown, [0, 7], strict=True):
        assert np.array_equal(image.get_array(), result.err2[1, : LENGTH - 1, : LENGTH - 1, step])
        assert image.get_clim() == COLOUR_LIMITS
    labels = [tick.get_text() for tick in shown[0].axes.get_xticklabels()]
    assert len(labels) == LENGTH - 1


def test_interrupted_run_chooses_only_completed_steps():
    result = synthetic()
    result.err[:, 6:] = np.nan
    result.err2[..., 6:] = np.nan
    assert completed_steps(result.err) == 6
    figure = consensus_figure(result)
    assert [int(t.get_text().split()[3]) for t in (image.axes.title for image in images(figure))] == [0, 2, 5]
    assert [line.get_label() for line in figure.axes[2].get_lines()] == ["iteration 0"]
    assert "interrupted after 6 of 12 steps" in figure._suptitle.get_text()
    with pytest.raises(ValueError, match="step 9"):
        consensus_figure(result, steps=[9])


def test_original_files_without_metadata_are_labelled_generically():
    result = synthetic(with_gram=False, metadata=False)
    plain = consensus_figure(result)
    assert len(plain.axes) == 2 and "no metadata" in plain._suptitle.get_text()
    assert [line.get_label() for line in plain.axes[0].get_lines()] == ["prompt 1", "prompt 2"]
    with_layers = consensus_figure(result, layers=LAYERS)
    assert len(with_layers.axes) == 4


def test_decades_get_a_log_axis():
    result = synthetic(with_gram=False)
    result.err[:, :, 1] = np.logspace(0, -4, STEPS)
    figure = consensus_figure(result)
    assert figure.axes[0].get_yscale() == "linear" and figure.axes[1].get_yscale() == "log"


def test_cli_writes_png_pdf_and_svg_of_a_real_run(tiny_checkpoint, tmp_path):
    result = gpt2fast.consensus(["one two three", "four"], weights=tiny_checkpoint, size=3,
                                savefile="E", matrixerror="m", progress=False)
    assert main(["plot", "E.npy", "--matrix", "m.npy", "--steps", "1,5"]) == 0
    assert (tmp_path / "E.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "E.npy", "-o", "f.pdf"]) == 0 and (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert main(["plot", "E.npy", "-o", "f.svg"]) == 0 and b"<svg" in (tmp_path / "f.svg").read_bytes()[:500]
    figure = consensus_figure(gpt2fast.load_result("E", "m"), steps=[5])
    assert np.array_equal(images(figure)[0].get_array(), result.err2[0, :3, :3, 5])
    curves = figure.axes[1].get_lines()[:2]
    for p, line in enumerate(curves):
        assert np.array_equal(line.get_ydata(), result.err[p, :, 1])
    assert [line.get_label() for line in curves] == ["1: one two three", "2: four"]


@pytest.mark.parametrize("arguments, word", [
    (["missing.npy"], "does not exist"),
    (["E.npy", "--matrix", "missing.npy"], "does not exist"),
    (["E.npy", "-o", "figure.jpg"], ".png"),
    (["E.npy", "-o", "no/such/dir/f.png"], "does not exist"),
    (["E.npy", "--steps", "1,x"], "--steps"),
    (["E.npy", "--iterations", "7"], "iteration 7"),
    (["E.npy", "--prompt-index", "3"], "prompt"),
    (["E.npy", "--layers", "0"], "--layers"),
    (["E.npy", "--dpi", "0"], "--dpi"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, arguments, word):
    np.save(tmp_path / "E.npy", synthetic(with_gram=False, metadata=False).err)
    assert main(["plot", *arguments, "--layers", "4"] if "--layers" not in arguments else ["plot", *arguments]) == 2
    message = capsys.readouterr().err
    assert message.startswith("gpt2fast: error:") and message.count("\n") == 1 and word in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E.npy"]


@pytest.mark.parametrize("setup, arguments, word", [
    ("empty-npy", ["E.npy"], "cannot read"),
    ("bad-json", ["E.npy"], "cannot read"),
    ("json-without-model", ["E.npy"], "model is missing or not an object"),
    ("plain", ["E.npy", "--prompt-index", "0"], "--prompt-index must be in [1, 2]"),
    ("plain", ["E.npy", "--iterations", "0"], "--layers"),
    ("with-matrix", ["E.npy", "--matrix", "m.npy", "--steps", ",".join(["0"] * 9), "--layers", "4"], "1 to 8"),
])
def test_cli_damaged_or_unplottable_files_are_one_line_errors(tmp_path, capsys, setup, arguments, word):
    result = synthetic(metadata=False)
    np.save(tmp_path / "E.npy", result.err)
    np.save(tmp_path / "m.npy", result.err2)
    if setup == "empty-npy":
        (tmp_path / "E.npy").write_bytes(b"")
    elif setup == "bad-json":
        (tmp_path / "E.json").write_text("{not json")
    elif setup == "json-without-model":
        (tmp_path / "E.json").write_text('{"flags": {}}')
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["plot", *arguments]) == 2
    message = capsys.readouterr().err
    assert message.startswith("gpt2fast: error:") and message.count("\n") == 1 and word in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("matrix", [False, True])
def test_cli_refuses_arrays_beside_another_runs_metadata(tiny_checkpoint, tmp_path, capsys, matrix):
    """E.npy / m.npy of one run, E.json of another (other prompts): one line, nothing drawn."""
    gpt2fast.consensus(["one two three", "four"], weights=tiny_checkpoint, size=2, savefile="E", matrixerror="m",
                       progress=False)
    other = gpt2fast.consensus(["five six", "seven"], weights=tiny_checkpoint, size=2 if matrix else 3,
                               savefile="F", matrixerror="n", progress=False)
    if matrix:  # the other run's matrices: 2 tokens, not 3
        (tmp_path / "m.npy").write_bytes((tmp_path / "n.npy").read_bytes())
    else:  # the other run's metadata: 3 iterations, not 2
        (tmp_path / "E.json").write_text((tmp_path / "F.json").read_text())
    assert other.err2.shape[1] == 2
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["plot", "E.npy", *(["--matrix", "m.npy"] if matrix else [])]) == 2
    message = capsys.readouterr().err
    assert message.startswith("gpt2fast: error:") and message.count("\n") == 1 and "different runs" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("damage, word", [
    (lambda meta: meta["files"]["err"].update(shape=5), "files.err.shape is not a list of integers"),
    (lambda meta: meta["prompts"][0].update(tokens=5), "prompts[0].tokens is missing or not a list"),
    (lambda meta: meta["prompts"][0].update(text=5), "prompts[0].text is missing or not a string"),
    (lambda meta: meta["prompts"][0]["tokens"].__setitem__(0, -5), "prompts[0].tokens is not a list of token ids"),
    (lambda meta: meta["prompts"][0].update(length=10**6), "prompts[0].length is not the number of its tokens"),
    (lambda meta: meta["model"].update(n_layer=1e300), "model.n_layer is missing or not an integer"),
    (lambda meta: meta["model"].update(n_layer=3), "describes err of shape (2, 6, 2)"),
    (lambda meta: meta["flags"].update(noff="yes"), "flags.noff is missing or not true or false"),
    (lambda meta: meta.update(decoded=[{"iteration": "1"}]), "decoded[0].iteration is missing or not an integer"),
    ("[1, 2]", "holds list, expected a JSON object"),
    (nested(100000), "cannot read as JSON (RecursionError"),
    ("fifo", "E.json is not a regular file"),
], ids=["shape-int", "tokens-int", "text-int", "token-negative", "length-huge", "layers-float", "layers-other",
        "flag-string", "decoded-string", "list", "nested", "fifo"])
def test_cli_metadata_of_the_wrong_form_is_one_line(tiny_checkpoint, tmp_path, capsys, damage, word):
    """Every field a plot reads is checked before drawing: one line, exit 2, nothing written."""
    gpt2fast.consensus(["one two three", "four"], weights=tiny_checkpoint, size=2, savefile="E", matrixerror="m",
                       progress=False)
    if damage == "fifo":
        (tmp_path / "E.json").unlink()
        os.mkfifo(tmp_path / "E.json")
    elif isinstance(damage, str):
        (tmp_path / "E.json").write_text(damage)
    else:
        meta = json.loads((tmp_path / "E.json").read_text())
        damage(meta)
        (tmp_path / "E.json").write_text(json.dumps(meta))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["plot", "E.npy", "--matrix", "m.npy"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("gpt2fast: error:") and message.count("\n") == 1 and word in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_arrays_that_are_not_real_floats_are_refused(tmp_path, capsys):
    np.save(tmp_path / "E.npy", synthetic(with_gram=False, metadata=False).err.astype(np.complex64))
    assert main(["plot", "E.npy", "--layers", "4"]) == 2
    assert "E.npy: expected an array of floats, got complex64" in capsys.readouterr().err


def test_many_prompts_are_drawn_as_their_mean_and_a_band():
    """More than MAX_CURVES prompts: row 1 shows the mean and the 10-90th percentile band of
    ``result.summary()``; a handful shows one line per prompt."""
    many = synthetic(prompts=MAX_CURVES + 4)
    figure = consensus_figure(many)
    curves = figure.axes[0]
    (mean,) = labelled_lines(curves)
    assert mean.get_label() == f"mean of {MAX_CURVES + 4} prompts"
    np.testing.assert_allclose(mean.get_ydata(), many.err[:, :, 0].astype(np.float64).mean(0))
    (band,) = curves.collections
    assert band.get_label() == "10-90th percentile"
    low, high = np.percentile(many.err[:, :, 0].astype(np.float64), [10, 90], axis=0)
    np.testing.assert_allclose(band.get_paths()[0].vertices[1:STEPS + 1, 1], low)
    assert len(labelled_lines(consensus_figure(synthetic(prompts=MAX_CURVES)).axes[0])) == MAX_CURVES


def labelled_lines(axes) -> list:
    """The data lines of an axes (iteration boundaries are unlabelled)."""
    return [line for line in axes.get_lines() if not line.get_label().startswith("_")]


def test_the_summary_leaves_out_prompts_that_did_not_reach_a_step():
    """Later batches (or ranks) of a stopped run end earlier: each step's statistics are over
    the prompts that reached it, and the plot draws every step some prompt reached."""
    result = synthetic(prompts=12)
    result.err[4:, 7:] = np.nan
    result.err[:, 10:] = np.nan
    summary = result.summary(band=(25.0, 75.0))
    assert summary.count.tolist() == [12] * 7 + [4] * 3 + [0] * 2
    np.testing.assert_allclose(summary.mean[8], result.err[:4, 8].astype(np.float64).mean(0))
    np.testing.assert_allclose(summary.high[3], np.percentile(result.err[:, 3].astype(np.float64), 75, axis=0))
    np.testing.assert_allclose(summary.median[2], np.median(result.err[:, 2].astype(np.float64), axis=0))
    assert np.isnan(summary.mean[10:]).all() and np.isnan(summary.low[10:]).all()
    assert completed_steps(result.err) == 10
    with pytest.raises(ValueError, match=r"band must be two percentiles, low < high, in \[0, 100\]"):
        result.summary(band=(90.0, 10.0))


def test_rows_two_and_three_follow_the_chosen_prompt():
    """A stopped run of batches: prompt 1 (a later batch) reached 3 steps, prompt 0 all 12.
    Its within-iteration view and heatmaps come from its own steps, none from after them;
    a prompt that reached none leaves them out."""
    result = synthetic()
    result.err[1, 3:] = np.nan
    result.err2[1, ..., 3:] = np.nan
    figure = consensus_figure(result, prompt=1)
    assert [int(t.get_text().split()[3]) for t in (image.axes.title for image in images(figure))] == [0, 1, 2]
    assert [line.get_label() for line in figure.axes[2].get_lines()] == []  # no whole iteration (L = 4)
    with pytest.raises(ValueError, match=r"step 5 is outside the steps prompt 2 completed \[0, 3\)"):
        consensus_figure(result, prompt=1, steps=[5])
    result.err[1] = np.nan
    assert images(consensus_figure(result, prompt=1)) == []
