"""The Python API: consensus runs and generation from a notebook; the CLI is a layer over it.

    import gpt2fast
    result = gpt2fast.consensus("The quick brown fox", model="gpt2", size=50, matrix=True)
    result.err.shape        # (1, 600, 2): P prompts, L·N steps, (mean |ŷ_0·ŷ_t|, mean G)
    result.err2.shape       # (1, T, T, 600): the cosine-similarity matrices
    result.metadata["model"]
    gpt2fast.generate("Once upon a time", max_length=30).texts[0]

Every argument mirrors a CLI flag of the same name. Bad values raise ``InputError`` (a
``ValueError``) before any work; an interrupted run (Ctrl-C) returns what it computed, with
NaN in the steps it did not reach and ``metadata["status"] == "interrupted"``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .backends import BACKENDS, make_generation, resolve_backend
from .config import (
    CONTEXT,
    DEFAULT_GENERATION_LENGTH,
    DEFAULT_ITERATIONS,
    DEFAULT_MODEL,
    DEFAULT_PROMPT,
    PRESETS,
    VOCAB_SIZE,
    ConsensusFlags,
    ModelConfig,
)
from .checkpoints import inspect_checkpoint
from .consensus import run_consensus
from .errors import InputError
from .generate import available_memory, cache_bytes
from .generate import generate as grow
from .interrupts import graceful_stop
from .outputs import (
    check_disk_space,
    exclusive_outputs,
    format_bytes,
    metadata_path,
    npy_bytes,
    npy_path,
    partial_path,
)
from .precision import DTYPES, matmul_precision, storage_dtype
from .results import ConsensusResult, load_result
from .tokenizer import gpt2_encoding
from .weight_sources import resolve_weights
from .weight_stream import WeightStream
from .weights import Weights, parameter_count

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | None
Label = Callable[[str], str]

__all__ = ["ConsensusResult", "GenerationResult", "consensus", "generate", "load_result"]


@dataclass
class GenerationResult:
    """Each prompt grown to ``max_length`` tokens: its text and token ids; exit_status is
    0, or 128 + the signal that stopped generation early."""

    texts: list[str]
    tokens: list[list[int]]
    exit_status: int = 0


def parameter(name: str) -> str:
    """How API errors name an argument: as the Python parameter."""
    return name


def whole(value, name: str, label: Label = parameter) -> int:
    """``value`` as an int (any integer type, not a bool, a float or a string), else InputError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise InputError(f"{label(name)} must be an integer, got {value!r}") from None


def check_options(flags: dict[str, object], choices: dict[str, tuple[object, tuple]],
                  paths: dict[str, object] | None = None, callbacks: dict[str, object] | None = None) -> None:
    """Raise InputError unless every flag is a bool, every choice one of its options, every
    path a str or os.PathLike (or None) and every callback callable (or None)."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, got {value!r}")
    for name, (value, options) in choices.items():
        if not isinstance(value, (str, type(None))) or value not in options:
            raise InputError(f"{name} must be one of {', '.join(map(str, options))}, got {value!r}")
    for name, value in (paths or {}).items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise InputError(f"{name} must be a path, got {value!r}")
        if isinstance(value, str) and not value.strip():
            raise InputError(f"{name} must not be empty")
    for name, value in (callbacks or {}).items():
        if value is not None and not callable(value):
            raise InputError(f"{name} must be callable, got {value!r}")


def check_values(*, size, seed, top_k=1, temperature: float = 1.0, max_length=None,
                 label: Label = parameter) -> None:
    """Raise InputError for a value no run can use; ``label`` names the argument."""
    size, seed, top_k = whole(size, "size", label), whole(seed, "seed", label), whole(top_k, "top_k", label)
    if size < 1:
        raise InputError(f"{label('size')} must be at least 1, got {size}")
    if not 0 <= seed < 2**64:
        raise InputError(f"{label('seed')} must be in [0, 2**64), got {seed}")
    if not 1 <= top_k <= VOCAB_SIZE:
        raise InputError(f"{label('top_k')} must be in [1, {VOCAB_SIZE}], got {top_k}")
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                             and temperature > 0):
        raise InputError(f"{label('temperature')} must be a positive number, got {temperature}")
    if max_length is not None and not 1 <= whole(max_length, "max_length", label) <= CONTEXT:
        raise InputError(f"{label('max_length')} must be in [1, {CONTEXT}] (the context), got {max_length}")


def check_decode(iterations, size: int, label: Label = parameter) -> tuple[int, ...]:
    """Decode iterations (integers in [0, size)), duplicates dropped, sorted."""
    if isinstance(iterations, (str, bytes)) or not isinstance(iterations, Iterable):
        raise InputError(f"{label('decode')} must be a list of iterations, got {iterations!r}")
    chosen = [whole(value, "decode", label) for value in iterations]
    for value in chosen:
        if not 0 <= value < size:
            raise InputError(f"{label('decode')}: iteration {value} is outside [0, {size}) for size {size}")
    return tuple(sorted(set(chosen)))


def resolve_device(name: str, dtype: str, label: Label = parameter) -> torch.device:
    """``auto`` -> cuda when available, else cpu; refuse cuda or tf32 without a GPU."""
    if dtype not in DTYPES:
        raise InputError(f"{label('dtype')} must be one of {', '.join(DTYPES)}, got {dtype!r}")
    has_cuda = torch.cuda.is_available()
    if name not in ("auto", "cpu", "cuda"):
        raise InputError(f"{label('device')} must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not has_cuda:
        raise InputError(f"{label('device')} cuda: no CUDA GPU is available (torch.cuda.is_available() is False)")
    device = torch.device("cuda" if name == "cuda" or (name == "auto" and has_cuda) else "cpu")
    if dtype == "tf32" and device.type != "cuda":
        raise InputError(f"{label('dtype')} tf32 needs a CUDA GPU (TF32 is a tensor-core mode)")
    return device


def check_writable(path: Path, label: str) -> None:
    """Refuse an output path whose directory is missing or does not take new files (tried
    with a temporary file that is removed at once), or where the array, its metadata or the
    metadata's temporary file would replace something that is not a regular file (a
    directory, a FIFO, a device)."""
    directory = path.parent
    partial_json = metadata_path(partial_path(path))
    partial_tmp = partial_json.with_name(partial_json.name + ".tmp")
    for taken in (path, metadata_path(path), partial_path(path), partial_json, partial_tmp):
        if taken.is_dir():
            raise InputError(f"{label}: {taken} is a directory")
        if taken.exists() and not taken.is_file() and taken != partial_path(path):  # a partial one is replaced
            raise InputError(f"{label}: {taken} exists and is not a regular file")
    if not directory.is_dir():
        raise InputError(f"{label}: directory {directory} does not exist")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise InputError(f"{label}: cannot write in {directory}: {error.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{label}: cannot overwrite {path} (permission denied)")


def expected_config(weights: str | os.PathLike | Weights | None, model: str | None) -> ModelConfig:
    """The model's sizes as far as they are known before anything heavy is read: a Weights'
    own, a checkpoint's ``config.json`` (``checkpoints.inspect_checkpoint``, which also refuses
    a missing, damaged or mismatched checkpoint), else the preset of ``model``. The checks
    made with them are made again with the loaded model's."""
    if weights is not None and not isinstance(weights, (str, os.PathLike, Weights)):
        raise InputError(f"weights must be a checkpoint path, \"random\" or a Weights, got {weights!r}")
    if isinstance(weights, Weights):
        return weights.config
    preset = PRESETS[model or DEFAULT_MODEL]
    cfg = preset
    if weights is not None and os.fspath(weights) != "random":
        cfg = inspect_checkpoint(Path(weights), preset, model is not None) or preset
    needed, free = 4 * parameter_count(cfg), available_memory(torch.device("cpu"))
    if needed > free:
        raise InputError(f"a model of n_layer={cfg.n_layer}, n_embd={cfg.n_embd} needs {format_bytes(needed)} "
                         f"of memory for its float32 weights; {format_bytes(free)} is free")
    return cfg


def load_weights(weights: str | os.PathLike | Weights | None, model: str | None, seed: int) -> tuple[Weights, str]:
    """The run's weights and model name: a ``Weights`` as given, else ``resolve_weights``
    (a checkpoint path, ``"random"``, or None to search), notes going to stderr, marked
    ``single_use``: the run they are loaded for keeps their only copy."""
    if model is not None and model not in PRESETS:
        raise InputError(f"model must be one of {', '.join(sorted(PRESETS))}, got {model!r}")
    name = model or DEFAULT_MODEL
    if isinstance(weights, Weights):
        if weights.single_use and not weights.state:
            raise InputError("these weights were loaded for one run, which has taken them; load them again")
        return weights, name
    spec = None if weights is None else os.fspath(weights)
    loaded = resolve_weights(spec, name, PRESETS[name], model is not None, seed, warn)
    return dataclasses.replace(loaded, single_use=True), name


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_integer(value) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


MAX_TOKEN_BYTES = 128  # no GPT-2 token is longer (tests/test_api.py checks the vocabulary)


def prompt_tokens(prompts: Prompts, limit: int) -> tuple[list[str], list[list[int]]]:
    """Texts and token ids of ``prompts`` (a string, strings, token-id lists, or one list of
    token ids; None: the default prompt); refuse empty prompts and prompts longer than
    ``limit`` tokens."""
    encoding = gpt2_encoding()
    if prompts is None:
        prompts = [DEFAULT_PROMPT]
    elif isinstance(prompts, str) or (isinstance(prompts, Sequence) and len(prompts) > 0
                                      and all(is_integer(item) for item in prompts)):
        prompts = [prompts]
    if isinstance(prompts, (bytes, bytearray)) or (
            isinstance(prompts, Sequence) and any(isinstance(prompt, (bytes, bytearray)) for prompt in prompts)):
        raise InputError("prompts must be text (str) or token ids, not bytes: decode them first")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise InputError("no prompts were given")
    texts, token_lists = [], []
    for number, prompt in enumerate(prompts, start=1):
        if isinstance(prompt, str):
            try:
                size = len(prompt.encode("utf-8"))
            except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8 (argv, stdin)
                raise InputError(f"prompt {number} is not valid UTF-8 text") from None
            if size > limit * MAX_TOKEN_BYTES:  # over the context whatever its tokens: not tokenised
                raise InputError(f"prompt {number} has {size} bytes, more than {limit} tokens can hold")
            tokens = encoding.encode(prompt, disallowed_special=())
        else:
            if not isinstance(prompt, Sequence) or not all(is_integer(token) for token in prompt):
                raise InputError(f"prompt {number} must be a string or a list of token ids, got {prompt!r}")
            tokens = [operator.index(token) for token in prompt]
            if any(not 0 <= token < VOCAB_SIZE for token in tokens):
                raise InputError(f"prompt {number} has token ids outside [0, {VOCAB_SIZE})")
            prompt = encoding.decode(tokens)
        if not tokens:
            raise InputError(f"prompt {number} is empty")
        if len(tokens) > limit:
            raise InputError(f"prompt {number} has {len(tokens)} tokens, more than the context of {limit}")
        texts.append(prompt)
        token_lists.append(tokens)
    return texts, token_lists


def consensus(
    prompts: Prompts = None,
    *,
    model: str | None = None,
    weights: str | os.PathLike | Weights | None = None,
    size: int = DEFAULT_ITERATIONS,
    noff: bool = False,
    random_init: bool = False,
    const_reset: bool = False,
    seed: int = 0,
    decode: Sequence[int] = (),
    matrix: bool = False,
    savefile: str | os.PathLike | None = None,
    matrixerror: str | os.PathLike | None = None,
    device: str = "auto",
    backend: str = "auto",
    dtype: str = "fp32",
    progress: bool = True,
    on_decode: Callable[[int, int, list[int]], None] | None = None,
    second_signal_exits: bool = False,
) -> ConsensusResult:
    """Run every prompt through ``size`` iterations of the block stack (one batch).

    prompts: a string, a list of strings or of token-id lists, or one token-id list (None:
    the default prompt). weights: a checkpoint path, ``"random"``, a ``Weights``, or None
    (Hugging Face cache, download, else seeded random weights with a warning on stderr).
    matrix: also record the T×T matrices (err2); implied by ``matrixerror``.
    savefile / matrixerror: write err / err2 there (``.npy`` added, metadata JSON beside)
    and return them memory-mapped; without them the arrays are returned in memory (err2
    only if it fits in half the free memory: else pass ``matrixerror``).
    decode: iterations after which the argmax decoding is taken; on_decode(iteration,
    prompt_index, token_ids) sees each one as it happens (also in ``metadata["decoded"]``).
    Ctrl-C stops the run at the next iteration (the result holds NaN after it); a second
    one raises KeyboardInterrupt, or, with ``second_signal_exits`` (the CLI), ends the
    process.
    """
    check_options(dict(noff=noff, random_init=random_init, const_reset=const_reset, matrix=matrix, progress=progress,
                       second_signal_exits=second_signal_exits),
                  dict(model=(model, (None, *PRESETS)), backend=(backend, BACKENDS)),
                  dict(savefile=savefile, matrixerror=matrixerror), dict(on_decode=on_decode))
    check_values(size=size, seed=seed)
    decode = check_decode(decode, size)
    device_ = resolve_device(device, dtype)
    backend = resolve_backend(backend, device_, dtype)
    err_path = None if savefile is None else npy_path(os.fspath(savefile))
    gram_path = None if matrixerror is None else npy_path(os.fspath(matrixerror))
    if err_path is not None and gram_path is not None and (
            err_path.resolve() == gram_path.resolve()
            or (err_path.exists() and gram_path.exists() and os.path.samefile(err_path, gram_path))):
        raise InputError(f"matrixerror and savefile both name {err_path} (one file)")
    for path, label in ((err_path, "savefile"), (gram_path, "matrixerror")):
        if path is not None:
            check_writable(path, label)
    # before anything heavy: the prompts and the files' sizes with the sizes known so far
    expected = expected_config(weights, model)
    texts, token_lists = check_run_fits(prompts, expected, size, matrix, err_path, gram_path)
    with exclusive_outputs([path for path in (err_path, gram_path) if path is not None]):
        loaded, model_name = load_weights(weights, model, seed)
        if loaded.config != expected:  # sizes the checkpoint told only on loading: check again
            texts, token_lists = check_run_fits(prompts, loaded.config, size, matrix, err_path, gram_path)
        flags = ConsensusFlags(iterations=size, noff=noff, random_init=random_init, const_reset=const_reset,
                               seed=seed, decode_iterations=decode)
        with tempfile.TemporaryDirectory(prefix="gpt2fast-") as folder:
            scratch = Path(folder)
            err_file = err_path or scratch / "Eplot.npy"
            gram_file = gram_path or (scratch / "m.npy" if matrix else None)
            meta, status = run_consensus(
                loaded, model_name, texts, token_lists, flags, device=device_, dtype=dtype, backend=backend,
                err_path=err_file, gram_path=gram_file, on_decode=on_decode or (lambda *_: None),
                show_progress=progress, scratch=(scratch / "Eplot.npy", scratch / "m.npy"),
                second_signal_exits=second_signal_exits,
            )
            err = read_array(err_file, keep_mapped=err_path is not None)
            err2 = None if gram_file is None else read_array(gram_file, keep_mapped=gram_path is not None)
    return ConsensusResult(err=err, err2=err2, metadata=meta, exit_status=status)


def read_array(path: Path, keep_mapped: bool) -> np.ndarray:
    """The array a run wrote: memory-mapped read-only where the file stays, else in memory."""
    mapped = np.load(path, mmap_mode="r")
    return mapped if keep_mapped else np.array(mapped)


def check_generation_fits(prompts: Prompts, cfg: ModelConfig, max_length: int) -> list[list[int]]:
    """The prompts' token ids, once they and ``max_length`` fit ``cfg``'s context."""
    if max_length > cfg.n_positions:
        raise InputError(f"max_length {max_length} (--use-model) exceeds the model's context of {cfg.n_positions}")
    return prompt_tokens(prompts, cfg.n_positions)[1]


def check_run_fits(prompts: Prompts, cfg: ModelConfig, size: int, matrix: bool, err_path: Path | None,
                   gram_path: Path | None) -> tuple[list[str], list[list[int]]]:
    """The prompts' texts and token ids for a model of ``cfg``'s sizes, once the run's arrays
    are known to fit: err2 kept in memory within half the free memory, the files on their
    disks (in-memory results pass through the temporary folder). InputError otherwise."""
    texts, token_lists = prompt_tokens(prompts, cfg.n_positions)
    n_prompts, length, steps = len(token_lists), max(map(len, token_lists)), cfg.n_layer * size
    gram_bytes = npy_bytes((n_prompts, length, length, steps))
    if matrix and gram_path is None and gram_bytes > available_memory(torch.device("cpu")) // 2:
        raise InputError(f"matrix=True keeps err2 in memory, and it needs {format_bytes(gram_bytes)}: more than "
                         f"half the free memory; pass matrixerror=PATH to stream it to a file instead")
    scratch = Path(tempfile.gettempdir())
    planned = {err_path or scratch / "Eplot.npy": npy_bytes((n_prompts, steps, 2))}
    if gram_path is not None or matrix:
        planned[gram_path or scratch / "m.npy"] = gram_bytes
    try:
        check_disk_space(planned)
    except OSError as error:
        note = "" if err_path and (gram_path or not matrix) else " (the temporary folder of in-memory results)"
        raise InputError(f"refusing to start: {error}{note}") from None
    return texts, token_lists


def generate(
    prompts: Prompts = None,
    *,
    max_length: int = DEFAULT_GENERATION_LENGTH,
    model: str | None = None,
    weights: str | os.PathLike | Weights | None = None,
    size: int = 1,
    noff: bool = False,
    random_init: bool = False,
    const_reset: bool = False,
    seed: int = 0,
    top_k: int = 10,
    temperature: float = 1.0,
    device: str = "auto",
    backend: str = "auto",
    dtype: str = "fp32",
    progress: bool = True,
    on_text: Callable[[str], None] | None = None,
    second_signal_exits: bool = False,
) -> GenerationResult:
    """Grow each prompt to ``max_length`` tokens as ``--use-model`` does: top-k sampling
    (seeded by ``seed``) from the model whose every forward pass applies the block stack
    ``size`` times. on_text(text) sees each finished prompt's text. Ctrl-C as in
    ``consensus``."""
    check_options(dict(noff=noff, random_init=random_init, const_reset=const_reset, progress=progress,
                       second_signal_exits=second_signal_exits),
                  dict(model=(model, (None, *PRESETS)), backend=(backend, BACKENDS)), callbacks=dict(on_text=on_text))
    check_values(size=size, seed=seed, top_k=top_k, temperature=temperature, max_length=max_length)
    device_ = resolve_device(device, dtype)
    backend = resolve_backend(backend, device_, dtype)
    expected = expected_config(weights, model)
    token_lists = check_generation_fits(prompts, expected, max_length)  # before anything heavy
    loaded, _ = load_weights(weights, model, seed)
    cfg = loaded.config
    if cfg != expected:  # sizes the checkpoint told only on loading: check again
        token_lists = check_generation_fits(prompts, cfg, max_length)
    storage = storage_dtype(dtype)
    needed = cache_bytes(cfg.n_layer, cfg.n_embd, size, max_length, storage.itemsize)
    available = available_memory(device_)
    if needed > available:
        raise InputError(f"the key/value cache for size {size} and length {max_length} (--use-model) "
                         f"needs {format_bytes(needed)}, {device_} has {format_bytes(available)} free")
    stream = WeightStream(cfg, loaded.state, seed=seed, random_init=random_init, const_reset=const_reset,
                          device=device_, dtype=storage, owned=loaded.single_use)
    generator = torch.Generator().manual_seed(seed)
    encoding = gpt2_encoding()
    result = GenerationResult(texts=[], tokens=[])
    new_tokens = sum(max(0, max_length - len(tokens)) for tokens in token_lists)
    with graceful_stop(second_signal_exits) as stop, matmul_precision(dtype), tqdm(
        total=new_tokens, desc="generate", unit="tok", file=sys.stderr, mininterval=0.5, disable=not progress
    ) as bar:
        for tokens in token_lists:
            grown = grow(make_generation(backend, stream, noff, size, dtype), tokens, max_length=max_length,
                         top_k=top_k, temperature=temperature, generator=generator,
                         on_token=lambda: bar.update(1), stop=stop)
            result.tokens.append(grown)
            result.texts.append(encoding.decode(grown))
            if on_text is not None:
                on_text(result.texts[-1])
            if stop.requested:
                break
        elapsed, produced = bar.format_dict["elapsed"], bar.n
    if progress:
        warn(f"gpt2fast: generated {produced} tokens in {elapsed:.1f} s "
             f"({produced / elapsed if elapsed else 0:.2f} tokens/s)")
    result.exit_status = stop.exit_status()
    return result
