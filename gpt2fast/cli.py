"""``python -m gpt2fast``: the original script's flags, checked, then wired to a run.

Every bad value ends the process with one line ``gpt2fast: error: ...`` and status 2,
before weights are loaded or any file is written.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from .config import (
    CONTEXT,
    DEFAULT_GENERATION_LENGTH,
    DEFAULT_ITERATIONS,
    DEFAULT_MODEL,
    DEFAULT_PROMPT,
    PRESETS,
    VOCAB_SIZE,
    ConsensusFlags,
)
from .backends import BACKENDS, make_generation, resolve_backend
from .consensus import run_consensus
from .errors import InputError
from .generate import available_memory, cache_bytes, generate
from .interrupts import graceful_stop
from .outputs import check_disk_space, format_bytes, npy_bytes, npy_path
from .precision import DTYPES, matmul_precision, storage_dtype
from .prompts import random_prompt, read_prompts, read_prompts_file
from .tokenizer import gpt2_encoding
from .weight_sources import resolve_weights
from .weight_stream import WeightStream
from .weights import Weights

EXIT_USAGE = 2
EXIT_FAILURE = 1


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a single line and exit status 2."""

    def error(self, message: str):
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m gpt2fast",
        description="Apply GPT-2's block stack to prompts N times over and record how "
        "aligned the token vectors become after every block (consensus).",
    )
    parser.add_argument("--model", choices=sorted(PRESETS),
                        help=f"GPT-2 size (default {DEFAULT_MODEL}; the original used gpt2-xl)")
    parser.add_argument("--weights", metavar="PATH|random",
                        help="checkpoint file/dir, or 'random' (default: HF cache, download, "
                        "else seeded random with a warning)")
    parser.add_argument("--size", type=int, metavar="N",
                        help=f"iterations over the block stack (default {DEFAULT_ITERATIONS}; "
                        "1 with --use-model)")
    parser.add_argument("--noff", action="store_true", help="skip the MLP half of every block")
    parser.add_argument("--random-init", action="store_true",
                        help="redraw Linear weights and embeddings N(0, 0.02^2) after embedding")
    parser.add_argument("--const-reset", action="store_true",
                        help="redraw them after every block application")
    parser.add_argument("--savefile", metavar="NAME",
                        help="err array file NAME.npy (default Eplot)")
    parser.add_argument("--matrixerror", metavar="NAME",
                        help="also write the T x T cosine-similarity matrices to NAME.npy")
    parser.add_argument("--decode", metavar="I,J,...",
                        help="0-based iterations after which to print the argmax decoding")
    parser.add_argument("--prompt", action="append", metavar="TEXT",
                        help="a prompt (repeatable); default: ask on the terminal / read stdin")
    parser.add_argument("--prompts-file", metavar="PATH", help="one prompt per line")
    parser.add_argument("--random-prompt", type=int, metavar="K",
                        help="a prompt of K random token ids (decoded, joined with spaces)")
    parser.add_argument("--random-prompts", type=int, metavar="P",
                        help="with --random-prompt: how many random prompts (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random draw (default 0)")
    parser.add_argument("--use-model", type=int, nargs="?", const=DEFAULT_GENERATION_LENGTH,
                        metavar="M", help=f"generate text up to M tokens (default {DEFAULT_GENERATION_LENGTH})")
    parser.add_argument("--top-k", type=int, default=10, help="generation: sample among the K most likely (default 10)")
    parser.add_argument("--temperature", type=float, default=1.0, help="generation: softmax temperature (default 1)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto = cuda when available (default auto)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto = triton on CUDA (fp32/tf32), torch elsewhere (default auto)")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES,
                        help="arithmetic: fp32 (default, faithful), tf32 or bf16 (faster, opt-in)")
    return parser


def parse_decode(text: str, iterations: int) -> tuple[int, ...]:
    """``"3,0,3"`` -> (0, 3): integers in [0, N), duplicates dropped, sorted."""
    chosen = set()
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise InputError(f"--decode: {part!r} is not an integer iteration") from None
        if not 0 <= value < iterations:
            raise InputError(f"--decode: iteration {value} is outside [0, {iterations}) for --size {iterations}")
        chosen.add(value)
    return tuple(sorted(chosen))


def validate(args: argparse.Namespace) -> None:
    """Value checks that need nothing but the flags."""
    generating = args.use_model is not None
    if args.size is not None and args.size < 1:
        raise InputError(f"--size must be at least 1, got {args.size}")
    if generating and not 1 <= args.use_model <= CONTEXT:
        raise InputError(f"--use-model length must be in [1, {CONTEXT}] (the context), got {args.use_model}")
    if args.random_prompt is not None and not 1 <= args.random_prompt <= CONTEXT:
        raise InputError(f"--random-prompt must be in [1, {CONTEXT}], got {args.random_prompt}")
    if args.random_prompts is not None:
        if args.random_prompt is None:
            raise InputError("--random-prompts needs --random-prompt K")
        if args.random_prompts < 1:
            raise InputError(f"--random-prompts must be at least 1, got {args.random_prompts}")
    sources = [flag for flag, value in (("--prompt", args.prompt), ("--prompts-file", args.prompts_file),
                                        ("--random-prompt", args.random_prompt)) if value is not None]
    if len(sources) > 1:
        raise InputError(f"choose one prompt source: {' and '.join(sources)} were both given")
    if args.prompt is not None and any(not text.strip() for text in args.prompt):
        raise InputError("--prompt: an empty prompt has no tokens to run")
    if not 1 <= args.top_k <= VOCAB_SIZE:
        raise InputError(f"--top-k must be in [1, {VOCAB_SIZE}], got {args.top_k}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise InputError(f"--temperature must be a positive number, got {args.temperature}")
    if args.seed < 0:
        raise InputError(f"--seed must be non-negative, got {args.seed}")
    if not generating:
        savefile = npy_path(args.savefile or "Eplot")
        if args.matrixerror is not None and npy_path(args.matrixerror).resolve() == savefile.resolve():
            raise InputError(f"--matrixerror and --savefile both name {savefile}")


def resolve_device(name: str, dtype: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; refuse cuda or tf32 without a GPU."""
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise InputError("--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False)")
    device = torch.device("cuda" if name == "cuda" or (name == "auto" and has_cuda) else "cpu")
    if dtype == "tf32" and device.type != "cuda":
        raise InputError("--dtype tf32 needs a CUDA GPU (TF32 is a tensor-core mode)")
    return device


def check_writable(path: Path, flag: str) -> None:
    """Refuse an output path that is a directory, or whose directory is missing or does not
    take new files (tried with a temporary file that is removed at once)."""
    directory = path.parent
    if path.is_dir():
        raise InputError(f"{flag}: {path} is a directory")
    if not directory.is_dir():
        raise InputError(f"{flag}: directory {directory} does not exist")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise InputError(f"{flag}: cannot write in {directory}: {error.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{flag}: cannot overwrite {path} (permission denied)")


def read_prompt_texts(args: argparse.Namespace, encoding, generating: bool) -> list[str]:
    """The prompts from the flags, or from stdin (asked on a terminal, read line by line when
    piped), or the default prompt when none is given."""
    if args.random_prompt is not None:
        rng = random.Random(args.seed)
        return [random_prompt(encoding, args.random_prompt, rng) for _ in range(args.random_prompts or 1)]
    if args.prompt is not None:
        return list(args.prompt)
    if args.prompts_file is not None:
        return read_prompts_file(Path(args.prompts_file))
    interactive = sys.stdin is not None and sys.stdin.isatty()
    texts = read_prompts(sys.stdin, sys.stdout if interactive else None, single=generating) if sys.stdin else []
    return texts or [DEFAULT_PROMPT]


def encode_prompts(texts: list[str], encoding, limit: int) -> list[list[int]]:
    """Token ids of each prompt; refuse empty prompts and prompts longer than the context."""
    token_lists = []
    for number, text in enumerate(texts, start=1):
        tokens = encoding.encode(text, disallowed_special=())
        if not tokens:
            raise InputError(f"prompt {number} is empty")
        if len(tokens) > limit:
            raise InputError(f"prompt {number} has {len(tokens)} tokens, more than the context of {limit}")
        token_lists.append(tokens)
    return token_lists


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_decoded(encoding, iteration: int, prompt: int, token_ids: list[int]) -> None:
    """The original's decode output, two lines per prompt and decode iteration."""
    tqdm.write(f"Decoded output for prompt {prompt + 1}, iteration {iteration}:", file=sys.stdout)
    tqdm.write(f"> {encoding.decode(token_ids)}", file=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except InputError as error:
        message = " ".join(str(error).split())
        print(f"gpt2fast: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    validate(args)
    generating = args.use_model is not None
    device = resolve_device(args.device, args.dtype)
    backend = resolve_backend(args.backend, device, args.dtype)
    if generating:
        for flag in ("decode", "matrixerror", "savefile"):
            if getattr(args, flag) is not None:
                warn(f"note: --{flag} has no effect with --use-model")
        err_path = gram_path = None
    else:
        err_path = npy_path(args.savefile or "Eplot")
        gram_path = npy_path(args.matrixerror) if args.matrixerror is not None else None
        check_writable(err_path, "--savefile")
        if gram_path is not None:
            check_writable(gram_path, "--matrixerror")
    iterations = args.size if args.size is not None else (1 if generating else DEFAULT_ITERATIONS)
    decode = parse_decode(args.decode, iterations) if args.decode is not None and not generating else ()
    model_name = args.model or DEFAULT_MODEL
    encoding = gpt2_encoding()
    weights = resolve_weights(
        args.weights, model_name, PRESETS[model_name], args.model is not None, args.seed, warn
    )
    cfg = weights.config
    if generating and args.use_model > cfg.n_positions:
        raise InputError(f"--use-model {args.use_model} exceeds the model's context of {cfg.n_positions}")
    texts = read_prompt_texts(args, encoding, generating)
    token_lists = encode_prompts(texts, encoding, cfg.n_positions)
    flags = ConsensusFlags(
        iterations=iterations, noff=args.noff, random_init=args.random_init,
        const_reset=args.const_reset, seed=args.seed, decode_iterations=decode,
    )
    if generating:
        return run_generation(args, weights, encoding, texts, token_lists, flags, device, backend)
    return run_consensus_job(weights, model_name, encoding, texts, token_lists, flags, device,
                             args.dtype, backend, err_path, gram_path)


def run_consensus_job(
    weights: Weights, model_name: str, encoding, texts: list[str], token_lists: list[list[int]],
    flags: ConsensusFlags, device: torch.device, dtype: str, backend: str, err_path: Path,
    gram_path: Path | None,
) -> int:
    """Check the disk, run, and report where the files went."""
    n_prompts, length = len(token_lists), max(len(tokens) for tokens in token_lists)
    steps = weights.config.n_layer * flags.iterations
    planned = {err_path: npy_bytes((n_prompts, steps, 2))}
    if gram_path is not None:
        planned[gram_path] = npy_bytes((n_prompts, length, length, steps))
    try:
        check_disk_space(planned)
    except OSError as error:
        raise InputError(f"refusing to start: {error}") from None
    try:
        meta, status = run_consensus(
            weights, model_name, texts, token_lists, flags, device=device, dtype=dtype,
            backend=backend, err_path=err_path, gram_path=gram_path,
            on_decode=lambda i, p, ids: print_decoded(encoding, i, p, ids),
        )
    except OSError as error:
        print(f"gpt2fast: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_FAILURE
    written = ", ".join(f"{path} {tuple(info['shape'])}" for path, info in
                        ((info["path"], info) for info in meta["files"].values()))
    done = meta["iterations_completed"]
    rate = meta["timings"]["steps_per_s"]
    outcome = "done" if meta["complete"] else f"INTERRUPTED after {done} of {flags.iterations} iterations (rest is NaN)"
    warn(f"gpt2fast: {outcome}: wrote {written} + metadata; "
         f"{done} iterations in {meta['timings']['run_s']:.1f} s ({rate} steps/s)")
    return status


def run_generation(
    args: argparse.Namespace, weights: Weights, encoding, texts: list[str],
    token_lists: list[list[int]], flags: ConsensusFlags, device: torch.device, backend: str,
) -> int:
    """``--use-model``: grow each prompt to M tokens and print it as the original did."""
    cfg = weights.config
    dtype = storage_dtype(args.dtype)
    needed = cache_bytes(cfg.n_layer, cfg.n_embd, flags.iterations, args.use_model, dtype.itemsize)
    available = available_memory(device)
    if needed > available:
        raise InputError(
            f"--use-model: the key/value cache for --size {flags.iterations} and length "
            f"{args.use_model} needs {format_bytes(needed)}, {device} has {format_bytes(available)} free"
        )
    stream = WeightStream(
        cfg, weights.state, seed=flags.seed, random_init=flags.random_init,
        const_reset=flags.const_reset, device=device, dtype=dtype,
    )
    generator = torch.Generator().manual_seed(flags.seed)
    new_tokens = sum(max(0, args.use_model - len(tokens)) for tokens in token_lists)
    with graceful_stop() as stop, matmul_precision(args.dtype), tqdm(
        total=new_tokens, desc="generate", unit="tok", file=sys.stderr, mininterval=0.5
    ) as bar:
        for tokens in token_lists:
            grown = generate(
                make_generation(backend, stream, flags.noff, flags.iterations, args.dtype), tokens,
                max_length=args.use_model, top_k=args.top_k, temperature=args.temperature,
                generator=generator, on_token=lambda: bar.update(1), stop=stop,
            )
            tqdm.write(f"> {encoding.decode(grown)}", file=sys.stdout)
            if stop.requested:
                break
        elapsed = bar.format_dict["elapsed"]
        produced = bar.n
    warn(f"gpt2fast: generated {produced} tokens in {elapsed:.1f} s "
         f"({produced / elapsed if elapsed else 0:.2f} tokens/s)")
    return stop.exit_status()
