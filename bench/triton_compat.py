"""Compile the kernel tests' ahead-of-time specs with whatever Triton this Python has.

The GPU machines run another Triton (3.6) than the development venv (3.9); kernels must
compile on both. This script collects the ``AOT_SPECS`` list of every tests/kernels/test_*.py
that has one (or of those named by ``--kernels``, e.g. ``skinny_linear`` for
test_skinny_linear.py), takes each spec as ``check_compiles`` does (unaligned and 16-byte
aligned pointers), compiles it with tests/kernels/aot.py's ``compile_for`` (no GPU needed)
for every ``--arch`` among its ``capabilities`` (e.g. a PDL build only for sm_90) in
``--jobs`` worker processes, and prints one line per build: ok or FAIL, registers, spill
bytes (stores/loads), shared memory, and for a SASS spec its tensor-core, cp.async and
programmatic-dependent-launch instruction counts (and how many of the L2 prefetches and the
early launch come before the wait); a failure is followed by the first lines
of its error. Exits 1 if any build failed.

Usage: /tmp/venv36/bin/python bench/triton_compat.py [--arch sm_90 sm_80] [--kernels skinny_linear ...] [--jobs 2]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiled mode; inherited by the workers
REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "kernels"
sys.path[:0] = [str(REPO), str(TESTS)]

from aot import AotSpec, compile_for  # noqa: E402

ERROR_LINES = 6
SASS_COUNTS = ("HGMMA", "HMMA", "LDGSTS", "CCTL.E.PML2", "PREEXIT", "ACQBULK")  # MMAs, cp.async; PDL: L2 prefetch, sync


def collect(kernels: list[str] | None) -> list[AotSpec]:
    """The AOT specs of the named kernels' test modules (all that define AOT_SPECS when
    ``kernels`` is None), each unaligned (unless it already is aligned) and aligned."""
    names = kernels or sorted(path.stem.removeprefix("test_") for path in TESTS.glob("test_*.py"))
    specs = []
    for name in names:
        module = importlib.import_module(f"test_{name}")
        if kernels is None and not hasattr(module, "AOT_SPECS"):
            continue
        for spec in module.AOT_SPECS:
            specs += [spec] if spec.aligned else [spec, replace(spec, label=spec.label + " aligned", aligned=True)]
    return specs


def build(spec: AotSpec, capability: int) -> tuple[bool, str]:
    """(compiled, one-line summary or the error's first lines) for ``spec`` on sm_<capability>."""
    try:
        r = compile_for(spec, capability)
    except Exception as error:  # noqa: BLE001 - any compiler failure is the report
        lines = [line for line in "".join(traceback.format_exception_only(error)).splitlines()
                 if line.strip()]
        return False, "\n".join("    " + line for line in lines[:ERROR_LINES])
    sass = "".join(f", {op} {r.count(op)}" for op in SASS_COUNTS) if spec.sass else ""
    if r.count("ACQBULK"):  # what a PDL build does before its wait (overlapping the kernel before)
        sass += "".join(f", {op} before the wait {r.count_before(op, 'ACQBULK')}" for op in ("CCTL.E.PML2", "PREEXIT"))
    return True, (f"{r.n_regs} regs, spills {r.spill_store_bytes}/{r.spill_load_bytes} B, "
                  f"{r.shared_bytes} B shared{sass}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["sm_90", "sm_80"], help="targets, e.g. sm_90 sm_80")
    parser.add_argument("--kernels", nargs="+", help="test module names without test_ (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="compiling processes")
    args = parser.parse_args()
    import triton

    capabilities = [int(arch.removeprefix("sm_")) for arch in args.arch]
    builds = [(spec, capability) for spec in collect(args.kernels) for capability in capabilities
              if capability in spec.capabilities]
    print(f"Triton {triton.__version__}: {len(builds)} builds", flush=True)
    failures = 0
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(build, spec, capability) for spec, capability in builds]
        for (spec, capability), future in zip(builds, futures):
            try:
                compiled, text = future.result()
            except Exception as error:  # noqa: BLE001 - a worker that died (e.g. a compiler crash)
                compiled, text = False, f"    {type(error).__name__}: {error}"
            failures += not compiled
            print(f"{'ok' if compiled else 'FAIL'} sm_{capability} {spec.label}"
                  + (f": {text}" if compiled else f"\n{text}"), flush=True)
    print(f"{len(builds) - failures} compiled, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
