"""Figures of a consensus run: the two curves, the within-iteration view, the T×T matrices.

``consensus_figure(result)`` returns a matplotlib ``Figure`` (no pyplot: it shows inline in
a notebook and saves anywhere), with
    row 1  err[..., 0] = mean_t |ŷ_0·ŷ_t| and err[..., 1] = mean of G against the step, one
           line per prompt (more than MAX_CURVES prompts: their mean and a 10-90th
           percentile band, ``ConsensusResult.summary``), iteration boundaries marked when
           they are few;
    row 2  the same values after each layer of chosen iterations (first, middle, last);
    row 3  with err2: heatmaps of G at chosen steps (of a thinned err2: steps it holds), one
           colour scale for all of them.
Files from an interrupted run end in NaN: only the completed steps are chosen and drawn
(those some prompt reached: prompts of later batches or other ranks may end earlier).
Files of the original script have no metadata: the layer count then comes from ``layers``
(row 2 and the boundaries are left out without it) and labels are generic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .results import ConsensusResult, matrix_every
from .tokenizer import gpt2_encoding

METRICS = ("mean |ŷ₀·ŷₜ| (err[…, 0])", "mean of G (err[…, 1])")
MAX_BOUNDARIES = 50  # iteration boundaries drawn when there are at most this many
MAX_TOKEN_LABELS = 24  # token strings on the heatmap axes up to this prompt length
LOG_SPAN = 100.0  # a positive series spanning this factor or more gets a log axis
COLOUR_LIMITS = (-1.0, 1.0)  # cosine similarity
MAX_HEATMAPS = 8  # heatmap panels in one figure
MAX_CURVES = 8  # more prompts than this are drawn as their mean and a percentile band


def completed_steps(err: np.ndarray) -> int:
    """Steps before the first one no prompt reached (all of them for a finished run)."""
    missing = np.flatnonzero(np.isnan(np.asarray(err[:, :, 0])).all(axis=0))
    return int(missing[0]) if missing.size else err.shape[1]


def spread_choice(count: int) -> list[int]:
    """First, middle and last of ``range(count)``, without repeats."""
    return sorted({0, (count - 1) // 2, count - 1}) if count > 0 else []


def wants_log(values: np.ndarray) -> bool:
    """True for positive finite values spanning LOG_SPAN or more."""
    finite = values[np.isfinite(values)]
    return finite.size > 1 and finite.min() > 0 and finite.max() / finite.min() >= LOG_SPAN


def prompt_names(result: ConsensusResult) -> list[str]:
    if result.metadata is None:
        return [f"prompt {p + 1}" for p in range(result.err.shape[0])]
    names = []
    for number, prompt in enumerate(result.metadata["prompts"], start=1):
        text = " ".join(prompt["text"].split())
        names.append(f"{number}: {text[:28]}…" if len(text) > 28 else f"{number}: {text}")
    return names


def title(result: ConsensusResult, n_layer: int | None) -> str:
    meta = result.metadata
    steps = result.err.shape[1]
    done = completed_steps(result.err)
    ended = "failed" if result.metadata is not None and result.metadata.get("status") == "failed" else "interrupted"
    status = "" if done == steps else f" · {ended} after {done} of {steps} steps"
    if meta is None:
        layers = f"L={n_layer} (given)" if n_layer else "layers unknown"
        return f"no metadata (the original script's file?) · {steps} steps · {layers}{status}"
    flags = meta["flags"]
    chosen = [name for name in ("noff", "random_init", "const_reset") if flags[name]]
    flag_text = ", ".join("--" + name.replace("_", "-") for name in chosen) or "no flags"
    return (f"{meta['model']['name']} · N={flags['size']} · {flag_text} · seed {flags['seed']} · "
            f"weights {meta['weights']['source']}{status}")


def draw_curves(axes, result: ConsensusResult, n_layer: int | None, names: list[str]) -> None:
    """Row 1: each metric against the step, one line per prompt, or for many prompts their
    mean and percentile band."""
    err = np.asarray(result.err)
    steps = err.shape[1]
    log_x = steps >= 1000
    x = np.arange(steps) + (1 if log_x else 0)
    summary = result.summary() if len(names) > MAX_CURVES else None
    for metric, ax in enumerate(axes):
        if summary is not None:
            low, high = summary.band
            ax.fill_between(x, summary.low[:, metric], summary.high[:, metric], alpha=0.3, linewidth=0,
                            label=f"{low:g}-{high:g}th percentile")
            ax.plot(x, summary.mean[:, metric], linewidth=1.2, label=f"mean of {len(names)} prompts")
        for p, name in enumerate(names if summary is None else ()):
            ax.plot(x, err[p, :, metric], label=name, linewidth=1)
        ax.set_title(METRICS[metric], fontsize=10)
        ax.set_xlabel("step u + 1 (log)" if log_x else "step u = i·L + l")
        if log_x:
            ax.set_xscale("log")
        if wants_log(err[:, :, metric]):
            ax.set_yscale("log")
        if n_layer and steps // n_layer <= MAX_BOUNDARIES:
            for boundary in range(n_layer, steps, n_layer):
                ax.axvline(boundary + (1 if log_x else 0), color="0.85", linewidth=0.6, zorder=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")


def draw_layers(axes, result: ConsensusResult, n_layer: int, iterations: Sequence[int], prompt: int) -> None:
    """Row 2: each metric after every layer of the chosen iterations, for one prompt."""
    err = np.asarray(result.err)
    layers = np.arange(n_layer)
    for metric, ax in enumerate(axes):
        for iteration in iterations:
            values = err[prompt, iteration * n_layer:(iteration + 1) * n_layer, metric]
            ax.plot(layers, values, marker=".", label=f"iteration {iteration}")
        ax.set_title(f"{METRICS[metric]} within an iteration, prompt {prompt + 1}", fontsize=10)
        ax.set_xlabel("layer l")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")


def token_labels(result: ConsensusResult, prompt: int) -> list[str] | None:
    """The prompt's tokens as strings, when the metadata has them and they are few."""
    if result.metadata is None:
        return None
    tokens = result.metadata["prompts"][prompt]["tokens"]
    if len(tokens) > MAX_TOKEN_LABELS:
        return None
    encoding = gpt2_encoding()
    return [repr(encoding.decode([token]))[1:-1] for token in tokens]


def prompt_length(result: ConsensusResult, prompt: int) -> int:
    if result.metadata is not None:
        return int(result.metadata["prompts"][prompt]["length"])
    diagonal = np.diagonal(np.asarray(result.err2[prompt, :, :, 0]))
    return int(np.count_nonzero(~np.isnan(diagonal)))


def draw_matrices(fig: Figure, axes, result: ConsensusResult, steps: Sequence[int], prompt: int,
                  n_layer: int | None) -> None:
    """Row 3: G of one prompt at the chosen steps, one shared colour scale."""
    length = prompt_length(result, prompt)
    labels = token_labels(result, prompt)
    image = None
    column = {int(step): index for index, step in enumerate(result.err2_steps)}
    for ax, step in zip(axes, steps, strict=True):
        gram = np.asarray(result.err2[prompt, :length, :length, column[step]], dtype=np.float32)
        image = ax.imshow(gram, vmin=COLOUR_LIMITS[0], vmax=COLOUR_LIMITS[1], cmap="RdBu_r",
                          interpolation="nearest")
        where = f" (iteration {step // n_layer}, layer {step % n_layer})" if n_layer else ""
        ax.set_title(f"G at step {step}{where}", fontsize=9)
        if labels is not None:
            ax.set_xticks(range(length), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(length), labels, fontsize=6)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="cosine similarity ŷₐ·ŷᵦ")


def consensus_figure(
    result: ConsensusResult,
    *,
    layers: int | None = None,
    iterations: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    prompt: int = 0,
) -> Figure:
    """The figure of ``result`` (see the module docstring).

    layers: L for files without metadata. iterations (row 2) and steps (row 3) default to
    the first, middle and last ones the chosen prompt completed (rows 2 and 3 are left out
    for a prompt that completed none: a later batch of a stopped run); prompt picks the
    prompt of rows 2 and 3. Raises ValueError for a choice outside what it completed.
    """
    n_layer = result.n_layer or layers
    done = completed_steps(result.err)
    if done == 0:
        raise ValueError("the run completed no step: there is nothing to plot")
    if not 0 <= prompt < result.err.shape[0]:
        raise ValueError(f"prompt {prompt} is outside [0, {result.err.shape[0]})")
    reached = completed_steps(result.err[prompt:prompt + 1])  # rows 2 and 3: the chosen prompt's steps
    if iterations is None and n_layer:
        iterations = spread_choice(reached // n_layer)
    if iterations and not n_layer:
        raise ValueError("the within-iteration view needs the layer count, which a file without "
                         "metadata lacks: give layers (--layers L)")
    for iteration in iterations or ():
        if not 0 <= iteration < reached // n_layer:
            raise ValueError(f"iteration {iteration} is not an iteration prompt {prompt + 1} completed")
    with_matrices = result.err2 is not None and (reached > 0 or steps is not None)
    if with_matrices:
        recorded = result.err2_steps[result.err2_steps < reached]  # every K-th step of a thinned err2
        steps = [int(recorded[i]) for i in spread_choice(len(recorded))] if steps is None else list(steps)
        if not 1 <= len(steps) <= MAX_HEATMAPS:
            raise ValueError(f"choose 1 to {MAX_HEATMAPS} steps for the heatmaps, got {len(steps)}")
        for step in steps:
            if not 0 <= step < reached:
                raise ValueError(f"step {step} is outside the steps prompt {prompt + 1} completed [0, {reached})")
            if step not in recorded:
                every = matrix_every(result.metadata)
                raise ValueError(f"step {step} is not in err2, which holds every {every}th step (0, {every}, ...)")
    rows = 1 + bool(iterations) + with_matrices
    panels = max(2, len(steps)) if with_matrices else 2
    columns = math.lcm(2, panels)  # grid columns: two halves above, `panels` cells below
    fig = Figure(figsize=(4.2 * panels, 3.6 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, columns)
    half, cell = columns // 2, columns // panels
    row = 0
    curve_axes = [fig.add_subplot(grid[row, :half]), fig.add_subplot(grid[row, half:])]
    draw_curves(curve_axes, result, n_layer, prompt_names(result))
    if iterations:
        row += 1
        draw_layers([fig.add_subplot(grid[row, :half]), fig.add_subplot(grid[row, half:])], result,
                    n_layer, iterations, prompt)
    if with_matrices:
        row += 1
        cells = [fig.add_subplot(grid[row, c * cell:(c + 1) * cell]) for c in range(len(steps))]
        draw_matrices(fig, cells, result, steps, prompt, n_layer)
    fig.suptitle(title(result, n_layer), fontsize=11)
    return fig
