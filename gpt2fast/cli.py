"""``python -m gpt2fast``: the original script's flags, parsed into the API's arguments.

The API checks them (``validation``); every bad value ends the process with one line
``gpt2fast: error: ...`` naming the flag, and status 2, before weights are loaded or any
file is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .api import consensus, generate, warn
from .backends import BACKENDS
from .config import DEFAULT_GENERATION_LENGTH, DEFAULT_ITERATIONS, DEFAULT_MODEL, DEFAULT_PROMPT, PRESETS
from .distributed import PeerRefused, RankError, environment, leader_process
from .errors import InputError, OneLineParser
from .memory import is_out_of_memory
from .outputs import metadata_path, partial_path
from .plan import RunPlan
from .precision import DTYPES
from .prompts import read_prompts
from .validation import check_values
from .tokenizer import gpt2_encoding

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


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
    parser.add_argument("--matrix-every", type=int, default=1, metavar="K",
                        help="err2 keeps G after steps 0, K, 2K, ... only (default 1: every step)")
    parser.add_argument("--matrix-dtype", default="float32", choices=("float32", "float16"),
                        help="err2's element type (default float32; float16 halves its bytes)")
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
    parser.add_argument("--plan", action="store_true",
                        help="print the run's output sizes, memory, batches and least time, and stop")
    parser.add_argument("--memory-budget", metavar="BYTES",
                        help="memory the prompts' batches may take besides the weights, e.g. 4GiB "
                        "(default: what is free); more prompts than fit run in batches")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto = cuda when available (default auto)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto = triton on a GPU where it was measured faster than torch (fp32/tf32), "
                        "else torch (default auto)")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES,
                        help="arithmetic: fp32 (default, faithful), tf32 or bf16 (faster, opt-in)")
    return parser


def parse_decode(text: str) -> list[int]:
    """``"3,0,3"`` -> [3, 0, 3]; the API checks the iterations."""
    chosen = []
    for part in text.split(","):
        part = part.strip()
        try:
            chosen.append(int(part))
        except ValueError:
            raise InputError(f"--decode: {part!r} is not an integer iteration") from None
    return chosen


def flag(name: str) -> str:
    """How CLI errors name an argument (an API parameter name): as its flag."""
    return "--" + {"max_length": "use_model", "prompts": "prompt"}.get(name, name).replace("_", "-")


def terminal_prompts(generating: bool) -> list[str]:
    """The prompts typed on the terminal (asked) or piped on stdin, else the default prompt."""
    interactive = sys.stdin is not None and sys.stdin.isatty()
    try:
        texts = read_prompts(sys.stdin, sys.stdout if interactive else None, single=generating) if sys.stdin else []
    except UnicodeDecodeError as error:
        raise InputError(f"standard input is not UTF-8 text (byte {error.start} of a line)") from None
    return texts or [DEFAULT_PROMPT]


def print_decoded(encoding, iteration: int, prompt: int, token_ids: list[int]) -> None:
    """The original's decode output, two lines per prompt and decode iteration, written and
    flushed at once (under torchrun several ranks share the terminal)."""
    with tqdm.external_write_mode(file=sys.stdout):
        sys.stdout.write(f"Decoded output for prompt {prompt + 1}, iteration {iteration}:\n"
                         f"> {encoding.decode(token_ids)}\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["plot"]:
            from .plot_cli import main as plot_main

            return plot_main(argv[1:])
        return run(build_parser().parse_args(argv))
    except PeerRefused:  # under torchrun: rank 0 printed why
        return EXIT_USAGE
    except InputError as error:
        if not (leader_process() or isinstance(error, RankError)):  # rank 0 prints what every rank found
            return EXIT_USAGE
        message = " ".join(str(error).split())
        print(f"gpt2fast: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before a run starts (e.g. at a prompt question); a run stops itself
        print("\ngpt2fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(args: argparse.Namespace) -> int:
    """The flags as the API's arguments; the API checks them all before any work."""
    generating = args.use_model is not None
    sourced = args.prompts_file is not None or args.random_prompt is not None
    prompts = args.prompt if args.prompt is not None or sourced else (lambda: terminal_prompts(generating))
    common = dict(prompts=prompts, prompts_file=args.prompts_file, random_prompt=args.random_prompt,
                  random_prompts=args.random_prompts, model=args.model, weights=args.weights, noff=args.noff,
                  random_init=args.random_init, const_reset=args.const_reset, seed=args.seed, device=args.device,
                  backend=args.backend, dtype=args.dtype, second_signal_exits=True, label=flag)
    if args.size is not None:
        common["size"] = args.size
    if generating:
        return generation_command(args, common)
    check_values(flag, top_k=args.top_k, temperature=args.temperature)  # generation's, but wrong in any mode
    return consensus_command(args, common)


def consensus_command(args: argparse.Namespace, common: dict) -> int:
    """Run, print decodings as they come, and report where the files went."""
    encoding = gpt2_encoding()
    try:
        result = consensus(decode=parse_decode(args.decode) if args.decode is not None else (),
                           savefile=args.savefile if args.savefile is not None else "Eplot",
                           matrixerror=args.matrixerror, memory_budget=args.memory_budget,
                           matrix_every=args.matrix_every, matrix_dtype=args.matrix_dtype, plan=args.plan,
                           on_decode=lambda i, p, ids: print_decoded(encoding, i, p, ids), **common)
    except Exception as error:  # a file that cannot be written, memory that cannot be had: one line, status 1
        memory = is_out_of_memory(error)
        if not memory and not isinstance(error, OSError):
            raise
        print(f"gpt2fast: error: {'out of memory: ' if memory else ''}{' '.join(str(error).split())}",
              file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(result, RunPlan):
        if environment().leader:
            print("\n".join(result.lines()))
        return 0
    meta = result.metadata
    if not environment().leader:  # under torchrun: rank 0 reports for the job
        return result.exit_status
    if meta["status"] == "failed":
        partial = metadata_path(partial_path(Path(meta["files"]["err"]["path"])))
        print(f"gpt2fast: error: {' '.join(meta.get('error', 'a rank failed').split())} (the files keep their "
              f"partial names: {partial} says how far each rank got)", file=sys.stderr)
        return result.exit_status or EXIT_FAILURE
    written = ", ".join(f"{info['path']} {tuple(info['shape'])}" for info in meta["files"].values())
    done, size = meta["iterations_completed"], meta["flags"]["size"]
    outcome = "done" if meta["complete"] else f"INTERRUPTED after {done} of {size} iterations (rest is NaN)"
    batches = sum(len(rank["batches"]) for rank in meta["ranks"])
    spread = f" on {meta['world_size']} ranks" if meta["world_size"] > 1 else ""
    spread += f" in {batches} batches" if batches > meta["world_size"] else ""
    warn(f"gpt2fast: {outcome}: wrote {written} + metadata; "
         f"{done} iterations{spread} in {meta['timings']['run_s']:.1f} s ({meta['timings']['steps_per_s']} steps/s)")
    return result.exit_status


def generation_command(args: argparse.Namespace, common: dict) -> int:
    """``--use-model``: grow each prompt to M tokens and print it as the original did; then
    note the consensus-only flags that were given (they have no effect here)."""
    result = generate(max_length=args.use_model, top_k=args.top_k, temperature=args.temperature,
                      on_text=lambda text: tqdm.write(f"> {text}", file=sys.stdout), **common)
    for name in ("decode", "matrixerror", "savefile"):
        if getattr(args, name) is not None:
            warn(f"note: --{name} has no effect with --use-model")
    return result.exit_status
