"""``python -m gpt2fast plot``: a run's files to one figure (``gpt2fast.plot``).

    python -m gpt2fast plot Eplot.npy [--matrix m.npy] [-o figure.png] [--steps U,V]
        [--iterations I,J] [--prompt-index P] [--layers L] [--dpi D]

Bad arguments end with one line ``gpt2fast: error: ...`` and status 2, and no file is
written; the figure is written only once it is complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .validation import check_writable
from .errors import InputError, OneLineParser
from .outputs import npy_path
from .plot import consensus_figure
from .results import load_result

FORMATS = (".png", ".pdf", ".svg")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m gpt2fast plot",
                           description="Plot the consensus curves (and the T x T matrices) of a run.")
    parser.add_argument("savefile", help="the err array of a run (Eplot.npy)")
    parser.add_argument("--matrix", metavar="M.npy", help="its err2 array (--matrixerror) for heatmaps")
    parser.add_argument("-o", "--output", metavar="FIGURE",
                        help="figure file, .png (default: the savefile's name with .png), .pdf or .svg")
    parser.add_argument("--steps", metavar="U,V,...",
                        help="0-based steps of the heatmaps (default: first, middle, last)")
    parser.add_argument("--iterations", metavar="I,J,...",
                        help="0-based iterations of the within-iteration view (default: first, middle, last)")
    parser.add_argument("--prompt-index", type=int, default=1, metavar="P",
                        help="1-based prompt of the within-iteration view and heatmaps (default 1)")
    parser.add_argument("--layers", type=int, metavar="L",
                        help="layers per iteration, for files without metadata (the original's)")
    parser.add_argument("--dpi", type=int, default=120, help="resolution of a PNG (default 120)")
    return parser


def integers(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def existing(name: str, flag: str) -> Path:
    path = npy_path(name)
    if not path.is_file():
        raise InputError(f"{flag}: {path} does not exist")
    return path


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    err_path = existing(args.savefile, "savefile")
    gram_path = existing(args.matrix, "--matrix") if args.matrix is not None else None
    output = Path(args.output) if args.output is not None else err_path.with_suffix(".png")
    if output.suffix.lower() not in FORMATS:
        raise InputError(f"-o: {output} must end in {', '.join(FORMATS)}")
    check_writable(output, "-o")
    if args.layers is not None and args.layers < 1:
        raise InputError(f"--layers must be at least 1, got {args.layers}")
    if not 10 <= args.dpi <= 1200:
        raise InputError(f"--dpi must be in [10, 1200], got {args.dpi}")
    iterations, steps = integers(args.iterations, "--iterations"), integers(args.steps, "--steps")
    try:
        result = load_result(err_path, gram_path)
    except (ValueError, EOFError, OSError) as error:  # a JSON syntax error is a ValueError
        raise InputError(f"cannot read the run's files: {error}") from None
    if not 1 <= args.prompt_index <= result.err.shape[0]:
        raise InputError(f"--prompt-index must be in [1, {result.err.shape[0]}], got {args.prompt_index}")
    try:
        figure = consensus_figure(result, layers=args.layers, iterations=iterations, steps=steps,
                                  prompt=args.prompt_index - 1)
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot plot {err_path}: {error}") from None
    try:
        figure.savefig(output, dpi=args.dpi)
    except OSError as error:
        print(f"gpt2fast: error: cannot write {output}: {error}", file=sys.stderr)
        return 1
    print(f"gpt2fast: wrote {output}", file=sys.stderr)
    return 0
