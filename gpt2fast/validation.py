"""The one validation boundary: every argument of a run checked and resolved before work.

``api.consensus`` and ``api.generate`` call these before anything heavy (no weights read, no
output touched); the CLI only parses flags into their arguments. Each check raises
``InputError`` with a one-line message; ``label`` turns a parameter name into how the
caller's user knows it (``parameter`` for the API, the CLI passes its flags).
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from .batches import plan_batches
from .config import CONTEXT, DEFAULT_MODEL, DEFAULT_PROMPT, PRESETS, VOCAB_SIZE, ModelConfig
from .checkpoints import inspect_checkpoint
from .errors import InputError
from .outputs import (
    check_disk_space,
    format_bytes,
    lock_path,
    metadata_path,
    npy_bytes,
    npy_path,
    partial_files,
    partial_path,
)
from .precision import DTYPES
from .prompts import MAX_PROMPTS, random_prompt, read_prompts_file
from .memory import available_memory, cache_bytes, consensus_memory, staging_budget
from .tokenizer import gpt2_encoding
from .weights import Weights, parameter_count

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | None
Label = Callable[[str], str]
MAX_TOKEN_BYTES = 128  # no GPT-2 token is longer (tests/test_api.py checks the vocabulary)


def parameter(name: str) -> str:
    """How API errors name an argument: as the Python parameter."""
    return name


def whole(value, name: str, label: Label) -> int:
    """``value`` as an int (any integer type, not a bool, a float or a string), else InputError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise InputError(f"{label(name)} must be an integer, got {value!r}") from None


def is_integer(value) -> bool:
    """An integer of any integer type, not a bool."""
    try:
        operator.index(value)
    except TypeError:
        return False
    return not isinstance(value, bool)


def check_options(label: Label, flags: dict[str, object], choices: dict[str, tuple[object, tuple]],
                  paths: dict[str, object] | None = None, callbacks: dict[str, object] | None = None) -> None:
    """Raise InputError unless every flag is a bool, every choice one of its options, every
    path a name (``check_path``; or None) and every callback callable (or None); ``label``
    itself must be callable."""
    if not callable(label):
        raise InputError(f"label must be callable, got {label!r}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise InputError(f"{label(name)} must be True or False, got {value!r}")
    for name, (value, options) in choices.items():
        if not isinstance(value, (str, type(None))) or value not in options:
            raise InputError(f"{label(name)} must be one of {', '.join(map(str, options))}, got {value!r}")
    for name, value in (paths or {}).items():
        if value is not None:
            check_path(value, label(name))
    for name, value in (callbacks or {}).items():
        if value is not None and not callable(value):
            raise InputError(f"{label(name)} must be callable, got {value!r}")


NOT_GIVEN = object()  # check_values: an argument the caller does not have


def check_path(value, label: str) -> str:
    """``value`` (a str or an os.PathLike giving one) as a str, once it is a name the file
    system can hold: not empty, no NUL byte, encodable."""
    try:
        text = os.fspath(value)
    except TypeError:
        text = None
    if not isinstance(text, str):
        raise InputError(f"{label} must be a path, got {value!r}")
    if not text.strip():
        raise InputError(f"{label} must not be empty")
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:
        raise InputError(f"{label}: {text!r} cannot be encoded as a file name") from None
    if b"\0" in encoded:
        raise InputError(f"{label}: a file name cannot hold a NUL character")
    return text


def check_values(label: Label, *, size=NOT_GIVEN, seed=NOT_GIVEN, top_k=NOT_GIVEN, temperature=NOT_GIVEN,
                 max_length=NOT_GIVEN) -> None:
    """Raise InputError for a value no run can use (None included)."""
    if size is not NOT_GIVEN and whole(size, "size", label) < 1:
        raise InputError(f"{label('size')} must be at least 1, got {size}")
    if seed is not NOT_GIVEN and not 0 <= whole(seed, "seed", label) < 2**64:
        raise InputError(f"{label('seed')} must be in [0, 2**64), got {seed}")
    if top_k is not NOT_GIVEN and not 1 <= whole(top_k, "top_k", label) <= VOCAB_SIZE:
        raise InputError(f"{label('top_k')} must be in [1, {VOCAB_SIZE}], got {top_k}")
    if temperature is not NOT_GIVEN and (isinstance(temperature, bool) or not (
            isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0)):
        raise InputError(f"{label('temperature')} must be a positive number, got {temperature}")
    if max_length is not NOT_GIVEN and not 1 <= whole(max_length, "max_length", label) <= CONTEXT:
        raise InputError(f"{label('max_length')} must be in [1, {CONTEXT}] (the context), got {max_length}")


MATRIX_DTYPES = {"float32": 4, "float16": 2}  # err2's element types and their sizes


def check_matrix_format(every, dtype, recorded: bool, label: Label) -> tuple[int, str]:
    """err2's thinning: (K, dtype) for G after steps 0, K, 2K, ... stored as dtype."""
    if whole(every, "matrix_every", label) < 1:
        raise InputError(f"{label('matrix_every')} must be at least 1, got {every}")
    if not isinstance(dtype, str) or dtype not in MATRIX_DTYPES:
        raise InputError(f"{label('matrix_dtype')} must be one of {', '.join(MATRIX_DTYPES)}, got {dtype!r}")
    if not recorded and (every != 1 or dtype != "float32"):
        raise InputError(f"{label('matrix_every')} and {label('matrix_dtype')} shape err2, which this run does not "
                         f"record: add {label('matrixerror')}")
    return operator.index(every), dtype


BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def check_memory_budget(value, label: Label) -> int | None:
    """Bytes from an integer or a text such as ``"512MiB"`` / ``"2 GB"`` (None: no budget)."""
    if value is None:
        return None
    if isinstance(value, str):
        number = value.strip().rstrip("bBiIkKmMgGtT ")
        unit = value.strip()[len(number):].strip().upper()
        try:
            scaled = float(number) * BYTE_UNITS[unit]
        except (ValueError, KeyError):
            raise InputError(f"{label('memory_budget')} must be bytes, such as 4GiB, 512MB or 1000000; "
                             f"got {value!r}") from None
        if not math.isfinite(scaled):
            raise InputError(f"{label('memory_budget')} must be a finite size, got {value!r}")
        value = int(scaled)
    elif not is_integer(value):
        raise InputError(f"{label('memory_budget')} must be bytes (an integer or a text such as 4GiB), "
                         f"got {type(value).__name__}")
    if value < 1 << 20:
        raise InputError(f"{label('memory_budget')} must be at least 1 MiB, got {value} bytes")
    return int(value)


def check_decode(iterations, size: int, label: Label) -> tuple[int, ...]:
    """Decode iterations (integers in [0, size)), duplicates dropped, sorted."""
    if isinstance(iterations, (str, bytes)) or not isinstance(iterations, Iterable):
        raise InputError(f"{label('decode')} must be a list of iterations, got {iterations!r}")
    chosen = [whole(value, "decode", label) for value in iterations]
    for value in chosen:
        if not 0 <= value < size:
            raise InputError(f"{label('decode')}: iteration {value} is outside [0, {size}) for size {size}")
    return tuple(sorted(set(chosen)))


def resolve_device(name: str, dtype: str, label: Label) -> torch.device:
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


def check_writable(path: Path, label: str, taken: tuple[Path, ...] = ()) -> None:
    """Refuse an output path whose directory is missing or does not take new files (tried
    with a temporary file that is removed at once), or where the file, or any of the names
    ``taken`` beside it, would replace something that is not a regular file (a directory, a
    FIFO, a device) or is too long a name for the file system."""
    directory = path.parent
    name_max = os.pathconf(directory, "PC_NAME_MAX") if directory.is_dir() else 255
    for name in (path, *taken):
        if len(os.fsencode(name.name)) > name_max:
            raise InputError(f"{label}: the name {path.name!r} is too long for the files written with it "
                             f"({name.name}: more than {name_max} bytes)")
        if name.is_dir():
            raise InputError(f"{label}: {name} is a directory")
        if name.exists() and not name.is_file() and name != partial_path(path):  # a partial one is replaced
            raise InputError(f"{label}: {name} exists and is not a regular file")
    if not directory.is_dir():
        raise InputError(f"{label}: directory {directory} does not exist")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise InputError(f"{label}: cannot write in {directory}: {error.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{label}: cannot overwrite {path} (permission denied)")


def run_files(path: Path) -> tuple[Path, ...]:
    """The names a run writes beside its output ``path``: metadata, partial files, lock."""
    return metadata_path(path), *partial_files(path), lock_path(path)


def check_output_name(name: str, label: str) -> None:
    """Refuse an output name that names a directory (``/``, ``.``, ``out/``) or ends in
    ``.partial``, the names of running runs' partial files (``outputs.partial_path``)."""
    final = name.rstrip("/").rsplit("/", 1)[-1]
    if name.endswith("/") or final in ("", ".", ".."):
        raise InputError(f"{label}: {name!r} names a directory, not a file")
    if npy_path(final).stem.endswith(".partial"):
        raise InputError(f"{label}: names ending in .partial are kept for the partial files of running runs")


def check_outputs(savefile, matrixerror, label: Label) -> tuple[Path | None, Path | None]:
    """The err and err2 ``.npy`` paths (None where not written to a file), once both are
    writable (``check_writable``) and are not one file."""
    for name, value in (("savefile", savefile), ("matrixerror", matrixerror)):
        if value is not None:
            check_output_name(os.fspath(value), label(name))
    err_path = None if savefile is None else npy_path(os.fspath(savefile))
    gram_path = None if matrixerror is None else npy_path(os.fspath(matrixerror))
    if err_path is not None and gram_path is not None and (
            err_path.resolve() == gram_path.resolve()
            or (err_path.exists() and gram_path.exists() and os.path.samefile(err_path, gram_path))):
        raise InputError(f"{label('matrixerror')} and {label('savefile')} both name {err_path} (one file)")
    for path, name in ((err_path, "savefile"), (gram_path, "matrixerror")):
        if path is not None:
            check_writable(path, label(name), run_files(path))
    return err_path, gram_path


def prompt_source(prompts: Prompts | Callable[[], Prompts], prompts_file, random_prompt, random_prompts, seed: int,
                  label: Label) -> Callable[[], Prompts]:
    """Check the prompt arguments (one source at most: ``prompts``, ``prompts_file`` or
    ``random_prompt``; ``random_prompts`` only with ``random_prompt``) and return the function
    that produces the prompts: reads the file, draws ``random_prompts`` texts of
    ``random_prompt`` random tokens (seeded by ``seed``), or returns ``prompts`` (calls it
    when callable: the CLI asks on the terminal only once everything else is checked)."""
    check_options(label, {}, {}, paths=dict(prompts_file=prompts_file))
    given = [name for name, value in (("prompts", prompts), ("prompts_file", prompts_file),
                                      ("random_prompt", random_prompt)) if value is not None]
    if len(given) > 1:
        raise InputError(f"choose one prompt source: {' and '.join(map(label, given))} were both given")
    if random_prompts is not None:
        if random_prompt is None:
            raise InputError(f"{label('random_prompts')} needs {label('random_prompt')}")
        if not 1 <= whole(random_prompts, "random_prompts", label) <= MAX_PROMPTS:
            raise InputError(f"{label('random_prompts')} must be in [1, {MAX_PROMPTS}], got {random_prompts}")
    if random_prompt is not None:
        if not 1 <= whole(random_prompt, "random_prompt", label) <= CONTEXT:
            raise InputError(f"{label('random_prompt')} must be in [1, {CONTEXT}], got {random_prompt}")
        return lambda: draw_random_prompts(random_prompt, random_prompts or 1, seed, label)
    if prompts_file is not None:
        return lambda: read_prompts_file(Path(prompts_file))
    return lambda: refuse_blank(prompts() if callable(prompts) else prompts)


def refuse_blank(prompts: Prompts) -> Prompts:
    """``prompts`` as given, unless a string among them has no visible text (a mistake: the
    terminal and prompts files skip such lines; drawn random prompts may be whitespace)."""
    texts = [prompts] if isinstance(prompts, str) else prompts if isinstance(prompts, (list, tuple)) else []
    for number, text in enumerate(texts, start=1):
        if isinstance(text, str) and not text.strip():
            raise InputError(f"prompt {number} is empty (only whitespace)")
    return prompts


def draw_random_prompts(n_tokens: int, count: int, seed: int, label: Label) -> list[str]:
    """``count`` texts of ``n_tokens`` random tokens (``prompts.random_prompt``), refused when
    one re-encodes beyond the context."""
    encoding, rng = gpt2_encoding(), random.Random(seed)
    texts = [random_prompt(encoding, n_tokens, rng) for _ in range(count)]
    longest = max(len(encoding.encode(text, disallowed_special=())) for text in texts)
    if longest > CONTEXT:  # the drawn tokens, decoded one by one and joined, re-encode longer
        raise InputError(f"{label('random_prompt')} {n_tokens}: the random text re-encodes to {longest} "
                         f"tokens, more than the context of {CONTEXT}; ask for fewer tokens")
    return texts


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
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InputError(f"prompts must be a string, a list of strings or of token-id lists, or one token-id list; "
                         f"got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise InputError("no prompts were given")
    if len(prompts) > MAX_PROMPTS:
        raise InputError(f"{len(prompts)} prompts are more than one run takes ({MAX_PROMPTS})")
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


def expected_config(weights, model: str | None, label: Label) -> ModelConfig:
    """The model's sizes as far as they are known before anything heavy is read: a Weights'
    own, a checkpoint's ``config.json`` (``checkpoints.inspect_checkpoint``, which also refuses
    a missing, damaged or mismatched checkpoint), else the preset of ``model``; refused when
    its float32 weights would not fit in the free memory. The checks made with them are made
    again with the loaded model's."""
    if weights is not None and not isinstance(weights, (str, os.PathLike, Weights)):
        raise InputError(f"{label('weights')} must be a checkpoint path, \"random\" or a Weights, got {weights!r}")
    if isinstance(weights, Weights):
        return weights.config
    preset = PRESETS[model or DEFAULT_MODEL]
    cfg = preset
    if weights is not None and check_path(weights, label("weights")) != "random":
        cfg = inspect_checkpoint(Path(weights), preset, model is not None) or preset
    needed, free = 4 * parameter_count(cfg), available_memory(torch.device("cpu"))
    if needed > free:
        raise InputError(f"a model of n_layer={cfg.n_layer}, n_embd={cfg.n_embd} needs {format_bytes(needed)} "
                         f"of memory for its float32 weights; {format_bytes(free)} is free")
    return cfg


def check_generation_fits(prompts: Prompts, cfg: ModelConfig, max_length: int, size: int, storage: torch.dtype,
                          device: torch.device, label: Label) -> list[list[int]]:
    """The prompts' token ids, once they and ``max_length`` fit ``cfg``'s context and the
    key/value cache of ``size`` iterations of ``max_length`` positions fits ``device``."""
    if max_length > cfg.n_positions:
        raise InputError(f"{label('max_length')} {max_length} exceeds the model's context of {cfg.n_positions}")
    token_lists = prompt_tokens(prompts, cfg.n_positions)[1]
    needed = cache_bytes(cfg.n_layer, cfg.n_embd, size, max_length, storage.itemsize)
    available = available_memory(device)
    if needed > available:
        raise InputError(f"the key/value cache for {label('size')} {size} and {label('max_length')} {max_length} "
                         f"needs {format_bytes(needed)}, {device} has {format_bytes(available)} free")
    return token_lists


def batch_budget(device: torch.device, memory_budget: int | None, weights: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes the prompts' batches may hold per place (host, and the device when it is a
    GPU): what is free less ``weights`` (bytes per place still to be taken), within
    ``memory_budget`` when given."""
    places = {"host": torch.device("cpu")} | ({"device": device} if device.type == "cuda" else {})
    weights = weights or {}
    return {place: max(0, min(available_memory(where) - weights.get(place, 0), memory_budget or math.inf))
            for place, where in places.items()}


def memory_for_batches(cfg: ModelConfig, device: torch.device, storage: torch.dtype, weights_to_load: bool,
                       memory_budget: int | None) -> tuple[dict[str, int], dict[str, int]]:
    """(the weights' bytes, the bytes the prompts' batches may take) per place: host, and the
    device when it is a GPU. The weights are counted in host memory while they are still to
    be loaded (float32), on a GPU always; the batches get what is free besides, within
    ``memory_budget``."""
    weights = {"host": 4 * parameter_count(cfg) if weights_to_load else 0}
    if device.type == "cuda":
        weights["device"] = storage.itemsize * parameter_count(cfg)
    return weights, batch_budget(device, memory_budget, weights)


def check_run_fits(prompts: Prompts, cfg: ModelConfig, size: int, matrix: bool, err_path: Path | None,
                   gram_path: Path | None, backend: str, device: torch.device, storage: torch.dtype,
                   weights_to_load: bool, memory_budget: int | None = None,
                   matrix_format: tuple[int, str] = (1, "float32")) -> tuple[list[str], list[list[int]]]:
    """The prompts' texts and token ids for a model of ``cfg``'s sizes, once the run is known
    to fit: each prompt's memory floor (``memory.consensus_memory``; more prompts run in
    batches, ``batches``) within the free memory less the weights (in host memory while
    ``weights_to_load``, on a GPU always) and within ``memory_budget``, err2 kept in memory
    within half of the free memory, the files on their disks (err2 of ``matrix_format``:
    every K-th step, float32 or float16; in-memory results never touch a disk).
    InputError otherwise."""
    texts, token_lists = prompt_tokens(prompts, cfg.n_positions)
    lengths = [len(tokens) for tokens in token_lists]
    n_prompts, length, steps = len(lengths), max(lengths), cfg.n_layer * size
    wants_gram = matrix or gram_path is not None
    every, matrix_dtype = matrix_format
    gram_bytes = npy_bytes((n_prompts, length, length, -(-steps // every)), MATRIX_DTYPES[matrix_dtype])
    if matrix and gram_path is None and gram_bytes > available_memory(torch.device("cpu")) // 2:
        raise InputError(f"matrix=True keeps err2 in memory, and it needs {format_bytes(gram_bytes)}: more than "
                         f"half the free memory; pass matrixerror=PATH to stream it to a file instead")
    _, budget = memory_for_batches(cfg, device, storage, weights_to_load, memory_budget)
    staging = staging_budget(memory_budget)
    plan_batches(list(range(n_prompts)), lengths, lambda batch: consensus_memory(
        cfg, batch, size, wants_gram, backend, device, storage.itemsize, staging), budget)
    planned = {path: nbytes for path, nbytes in ((err_path, npy_bytes((n_prompts, steps, 2))), (gram_path, gram_bytes))
               if path is not None}
    try:
        check_disk_space(planned)
    except OSError as error:
        raise InputError(f"refusing to start: {error}") from None
    return texts, token_lists
