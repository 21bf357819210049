"""A consensus run's arrays and metadata, from memory or from the files a run wrote.

Files written by the original script have no metadata JSON: ``metadata`` is then None and
everything else works the same.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import VOCAB_SIZE
from .errors import InputError
from .outputs import metadata_path, npy_path


@dataclass
class PromptSummary:
    """err's statistics across prompts at every step (NaN where no prompt has a value):
    mean, median, low and high ([L·N, 2] float64 each; low/high the ``band`` percentiles),
    and count ([L·N] int64), how many prompts have a value there."""

    mean: np.ndarray
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray
    band: tuple[float, float]


def summarise_prompts(err: np.ndarray, band: tuple[float, float] = (10.0, 90.0)) -> PromptSummary:
    """The ``PromptSummary`` of err (P, L·N, 2); prompts a stopped run did not reach at a
    step (NaN) are left out there."""
    if not 0.0 <= band[0] < band[1] <= 100.0:
        raise ValueError(f"band must be two percentiles, low < high, in [0, 100]; got {band}")
    values = np.asarray(err, dtype=np.float64)
    with warnings.catch_warnings():  # steps no prompt reached: NaN, as documented
        warnings.simplefilter("ignore", RuntimeWarning)
        low, median, high = np.nanpercentile(values, [band[0], 50.0, band[1]], axis=0)
        mean = np.nanmean(values, axis=0)
    return PromptSummary(mean=mean, median=median, low=low, high=high,
                         count=np.count_nonzero(~np.isnan(values[:, :, 0]), axis=0), band=band)


@dataclass
class ConsensusResult:
    """err (P, L·N, 2) float32 and err2 (P, T, T, ceil(L·N / K)) float32 or float16 (None
    when not recorded; K = ``matrix_every``, 1 unless thinned), in the layouts of ``outputs``; NaN marks steps a stopped run did not reach. metadata: the run's
    JSON (model, flags, prompts, tokens, timings, decoded ids), or None for the original's
    files. exit_status: 0, or 128 + the signal that stopped the run."""

    err: np.ndarray
    err2: np.ndarray | None
    metadata: dict | None
    exit_status: int = 0

    @property
    def n_layer(self) -> int | None:
        """L, from the metadata (None without it)."""
        return None if self.metadata is None else int(self.metadata["model"]["n_layer"])

    @property
    def err2_steps(self) -> np.ndarray:
        """The step u of each entry of err2's last axis: 0, K, 2K, ... (every step unless thinned)."""
        return np.arange(self.err.shape[1])[:: matrix_every(self.metadata)]

    def summary(self, band: tuple[float, float] = (10.0, 90.0)) -> PromptSummary:
        """err's mean, median and ``band`` percentiles across prompts at every step (what
        ``gpt2fast plot`` draws for more than a handful of prompts)."""
        return summarise_prompts(self.err, band)

    @property
    def decoded(self) -> list[dict]:
        """The argmax decodings: {"iteration", "prompt", "tokens"} each ([] without metadata)."""
        return [] if self.metadata is None else list(self.metadata.get("decoded", []))


def read_metadata(array_path: Path) -> dict | None:
    """The JSON beside ``array_path`` (None when there is none: the original's files);
    InputError when it is not a regular file or not JSON."""
    path = metadata_path(array_path)
    if not os.path.lexists(path):
        return None
    if not path.is_file():
        raise InputError(f"{path} is not a regular file")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSON syntax, UTF-8, nesting beyond the parser
        raise InputError(f"{path}: cannot read as JSON ({type(error).__name__}: {error})") from None


def load_result(savefile: str | os.PathLike, matrixerror: str | os.PathLike | None = None) -> ConsensusResult:
    """The arrays a run wrote (memory-mapped, read-only) and the metadata beside them, once
    they are float arrays of the layouts in ``outputs`` and the metadata describes them
    (``check_metadata``). InputError otherwise."""
    err_path = npy_path(os.fspath(savefile))
    err = load_array(err_path)
    err2 = None if matrixerror is None else load_array(npy_path(os.fspath(matrixerror)))
    if err.ndim != 3 or err.shape[-1] != 2:
        raise InputError(f"{err_path}: expected an err array of shape (P, steps, 2), got {err.shape}")
    metadata = read_metadata(err_path)
    recorded = -(-err.shape[1] // matrix_every(metadata))
    if err2 is not None and (err2.ndim != 4 or err2.shape[0] != err.shape[0] or err2.shape[3] != recorded
                             or err2.shape[1] != err2.shape[2]):
        raise InputError(f"{matrixerror}: expected err2 of shape (P, T, T, {recorded}), got {err2.shape}")
    check_metadata(metadata, metadata_path(err_path), err, err2)
    return ConsensusResult(err=err, err2=err2, metadata=metadata)


def matrix_every(metadata) -> int:
    """K of a run whose err2 holds every K-th step (1 without metadata, or before thinning
    existed); ``check_metadata`` refuses a value that is not a positive integer."""
    flags = metadata.get("flags") if isinstance(metadata, dict) else None
    every = flags.get("matrix_every", 1) if isinstance(flags, dict) else 1
    return every if type(every) is int and every >= 1 else 1


def load_array(path: Path) -> np.ndarray:
    """A ``.npy`` of real floats, memory-mapped read-only."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{path}: expected an array of floats, got {getattr(array, 'dtype', type(array).__name__)}")
    return array


def check_metadata(metadata, origin: Path, err: np.ndarray, err2: np.ndarray | None) -> None:
    """Raise InputError unless ``metadata`` (None: the original's files, nothing to check) has
    the fields readers use, with their types, and describes these arrays: P prompts of up to
    T tokens, n_layer · size steps, the recorded shapes (an array of one run beside the
    metadata of another is refused, not drawn)."""
    if metadata is None:
        return

    def entry(mapping: dict, key: str, kind: type, where: str):
        value = mapping.get(key) if isinstance(mapping, dict) else None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InputError(f"{origin}: {where}{key} is missing or not {KINDS[kind]}")
        return value

    if not isinstance(metadata, dict):
        raise InputError(f"{origin}: holds {type(metadata).__name__}, expected a JSON object")
    model, flags = entry(metadata, "model", dict, ""), entry(metadata, "flags", dict, "")
    entry(model, "name", str, "model.")
    n_layer, size = entry(model, "n_layer", int, "model."), entry(flags, "size", int, "flags.")
    entry(flags, "seed", int, "flags.")
    every = entry(flags, "matrix_every", int, "flags.") if "matrix_every" in flags else 1
    if every < 1:
        raise InputError(f"{origin}: flags.matrix_every must be at least 1, got {every}")
    for name in ("noff", "random_init", "const_reset"):
        entry(flags, name, bool, "flags.")
    entry(entry(metadata, "weights", dict, ""), "source", str, "weights.")
    prompts = entry(metadata, "prompts", list, "")
    for number, prompt in enumerate(prompts):
        where = f"prompts[{number}]."
        entry(prompt, "text", str, where)
        tokens = entry(prompt, "tokens", list, where)
        if not tokens or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < VOCAB_SIZE
                                 for t in tokens):
            raise InputError(f"{origin}: {where}tokens is not a list of token ids")
        if entry(prompt, "length", int, where) != len(tokens):
            raise InputError(f"{origin}: {where}length is not the number of its tokens")
    for number, decoded in enumerate(entry(metadata, "decoded", list, "") if "decoded" in metadata else []):
        for key in ("iteration", "prompt"):
            entry(decoded, key, int, f"decoded[{number}].")
        entry(decoded, "tokens", list, f"decoded[{number}].")
    length = max((len(p["tokens"]) for p in prompts), default=0)
    described = {"err": (len(prompts), n_layer * size, 2),
                 "err2": (len(prompts), length, length, -(-n_layer * size // every))}
    files = entry(metadata, "files", dict, "") if "files" in metadata else {}
    for role, array in (("err", err), ("err2", err2)):
        recorded = files.get(role, {}).get("shape") if isinstance(files.get(role), dict) else None
        if recorded is not None and not (isinstance(recorded, list) and all(type(n) is int for n in recorded)):
            raise InputError(f"{origin}: files.{role}.shape is not a list of integers")
        if array is not None and (array.shape != described[role] or recorded not in (None, list(array.shape))):
            raise InputError(f"{origin} describes {role} of shape {described[role]}, but the array has shape "
                             f"{array.shape}: they are from different runs")


KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false"}
