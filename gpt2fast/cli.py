"""``python -m gpt2fast``: the original script's flags, checked, then wired to a run.

Every bad value ends the process with one line ``gpt2fast: error: ...`` and status 2,
before weights are loaded or any file is written.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from tqdm import tqdm

from .api import check_decode, check_values, check_writable, consensus, expected_config, generate, resolve_device, warn
from .backends import BACKENDS, resolve_backend
from .config import CONTEXT, DEFAULT_GENERATION_LENGTH, DEFAULT_ITERATIONS, DEFAULT_MODEL, DEFAULT_PROMPT, PRESETS
from .errors import InputError
from .outputs import npy_path
from .precision import DTYPES
from .prompts import random_prompt, read_prompts, read_prompts_file
from .tokenizer import gpt2_encoding

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


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
                        help="auto = triton on CUDA for fp32/tf32, torch elsewhere (default auto)")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES,
                        help="arithmetic: fp32 (default, faithful), tf32 or bf16 (faster, opt-in)")
    return parser


def parse_decode(text: str, iterations: int) -> tuple[int, ...]:
    """``"3,0,3"`` -> (0, 3): integers in [0, N), duplicates dropped, sorted."""
    chosen = []
    for part in text.split(","):
        part = part.strip()
        try:
            chosen.append(int(part))
        except ValueError:
            raise InputError(f"--decode: {part!r} is not an integer iteration") from None
    return check_decode(chosen, iterations, label=flag)


def flag(name: str) -> str:
    """How CLI errors name an argument (an API parameter name): as its flag."""
    return "--" + {"max_length": "use_model"}.get(name, name).replace("_", "-")


def validate(args: argparse.Namespace) -> None:
    """Value checks that need nothing but the flags."""
    generating = args.use_model is not None
    check_values(size=args.size if args.size is not None else 1, seed=args.seed, top_k=args.top_k,
                 temperature=args.temperature, max_length=args.use_model, label=flag)
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
    for name in ("savefile", "matrixerror"):
        if getattr(args, name) is not None and not getattr(args, name).strip():
            raise InputError(f"--{name} must not be empty")
    if not generating:
        savefile = npy_path(args.savefile or "Eplot")
        if args.matrixerror is not None and npy_path(args.matrixerror).resolve() == savefile.resolve():
            raise InputError(f"--matrixerror and --savefile both name {savefile}")


def read_prompt_texts(args: argparse.Namespace, encoding, generating: bool) -> list[str]:
    """The prompts from the flags, or from stdin (asked on a terminal, read line by line when
    piped), or the default prompt when none is given."""
    if args.random_prompt is not None:
        rng = random.Random(args.seed)
        texts = [random_prompt(encoding, args.random_prompt, rng) for _ in range(args.random_prompts or 1)]
        longest = max(len(encoding.encode(text, disallowed_special=())) for text in texts)
        if longest > CONTEXT:  # the drawn tokens, decoded one by one and joined, re-encode longer
            raise InputError(f"--random-prompt {args.random_prompt}: the random text re-encodes to {longest} "
                             f"tokens, more than the context of {CONTEXT}; ask for fewer tokens")
        return texts
    if args.prompt is not None:
        return list(args.prompt)
    if args.prompts_file is not None:
        return read_prompts_file(Path(args.prompts_file))
    interactive = sys.stdin is not None and sys.stdin.isatty()
    texts = read_prompts(sys.stdin, sys.stdout if interactive else None, single=generating) if sys.stdin else []
    return texts or [DEFAULT_PROMPT]


def print_decoded(encoding, iteration: int, prompt: int, token_ids: list[int]) -> None:
    """The original's decode output, two lines per prompt and decode iteration."""
    tqdm.write(f"Decoded output for prompt {prompt + 1}, iteration {iteration}:", file=sys.stdout)
    tqdm.write(f"> {encoding.decode(token_ids)}", file=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["plot"]:
            from .plot_cli import main as plot_main

            return plot_main(argv[1:])
        return run(build_parser().parse_args(argv))
    except InputError as error:
        message = " ".join(str(error).split())
        print(f"gpt2fast: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before a run starts (e.g. at a prompt question); a run stops itself
        print("\ngpt2fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(args: argparse.Namespace) -> int:
    validate(args)
    generating = args.use_model is not None
    device = resolve_device(args.device, args.dtype, label=flag)
    resolve_backend(args.backend, device, args.dtype)
    if generating:
        for name in ("decode", "matrixerror", "savefile"):
            if getattr(args, name) is not None:
                warn(f"note: --{name} has no effect with --use-model")
        err_path = gram_path = None
    else:
        err_path = npy_path(args.savefile or "Eplot")
        gram_path = npy_path(args.matrixerror) if args.matrixerror is not None else None
        check_writable(err_path, "--savefile")
        if gram_path is not None:
            check_writable(gram_path, "--matrixerror")
    iterations = args.size if args.size is not None else (1 if generating else DEFAULT_ITERATIONS)
    decode = parse_decode(args.decode, iterations) if args.decode is not None and not generating else ()
    expected_config(args.weights, args.model)  # a missing or damaged checkpoint before the prompt questions
    texts = read_prompt_texts(args, gpt2_encoding(), generating)
    common = dict(model=args.model, weights=args.weights, size=iterations, noff=args.noff,
                  random_init=args.random_init, const_reset=args.const_reset, seed=args.seed,
                  device=args.device, backend=args.backend, dtype=args.dtype, second_signal_exits=True)
    if generating:
        return run_generation(texts, args, common)
    return run_consensus_job(texts, decode, err_path, gram_path, common)


def run_consensus_job(texts: list[str], decode: tuple[int, ...], err_path: Path, gram_path: Path | None,
                      common: dict) -> int:
    """Run, print decodings as they come, and report where the files went."""
    encoding = gpt2_encoding()
    try:
        result = consensus(texts, decode=decode, savefile=err_path, matrixerror=gram_path,
                           on_decode=lambda i, p, ids: print_decoded(encoding, i, p, ids), **common)
    except OSError as error:
        print(f"gpt2fast: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_FAILURE
    meta = result.metadata
    written = ", ".join(f"{info['path']} {tuple(info['shape'])}" for info in meta["files"].values())
    done = meta["iterations_completed"]
    outcome = "done" if meta["complete"] else \
        f"INTERRUPTED after {done} of {common['size']} iterations (rest is NaN)"
    warn(f"gpt2fast: {outcome}: wrote {written} + metadata; "
         f"{done} iterations in {meta['timings']['run_s']:.1f} s ({meta['timings']['steps_per_s']} steps/s)")
    return result.exit_status


def run_generation(texts: list[str], args: argparse.Namespace, common: dict) -> int:
    """``--use-model``: grow each prompt to M tokens and print it as the original did."""
    result = generate(texts, max_length=args.use_model, top_k=args.top_k, temperature=args.temperature,
                      on_text=lambda text: tqdm.write(f"> {text}", file=sys.stdout), **common)
    return result.exit_status
