"""Ahead-of-time compilation of @triton.jit kernels for real NVIDIA targets, with no GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", capability, 32))`` runs the whole
pipeline (TTIR, TTGIR, LLVM IR, PTX, then the ``ptxas`` that ships inside the triton
wheel) without touching a driver. Register and spill counts are normally read from the
driver after loading the cubin; without one we take them from ptxas's ``-v`` report, which
Triton prints when ``TRITON_DUMP_PTXAS_LOG`` is set. The compilation cache would skip
ptxas (and the report), so these compiles always run the full pipeline.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

_REGISTERS = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass(frozen=True)
class AotKernel:
    """One kernel compiled for one target.

    cubin: the ELF binary; n_regs: registers per thread; spill_store_bytes /
    spill_load_bytes: register spills per thread; stack_bytes: the per-thread stack frame
    (spills plus local arrays; Triton's runtime ``n_spills`` is this local size / 4).
    """

    compiled: triton.compiler.CompiledKernel
    cubin: bytes
    n_regs: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    ptxas_log: str


def compile_for(kernel, signature: dict, constexprs: dict, capability: int, **options) -> AotKernel:
    """Compile ``kernel`` for sm_<capability> (e.g. 80, 90) without a GPU.

    signature: every parameter name -> Triton type ("*fp32", "i64", "u64", "constexpr", ...);
    constexprs: values of the constexpr parameters; options: compile options such as
    num_warps. Raises TypeError for a kernel decorated under TRITON_INTERPRET=1 (then it is
    an InterpretedFunction, which cannot be compiled).
    """
    if not isinstance(kernel, JITFunction):
        raise TypeError(f"{kernel!r} is not a JITFunction; was it decorated under TRITON_INTERPRET=1?")
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    text = log.getvalue()
    registers, frame = _REGISTERS.search(text), _FRAME.search(text)
    if registers is None or frame is None:
        raise RuntimeError(f"no register/spill report in the ptxas log:\n{text}")
    return AotKernel(
        compiled=compiled,
        cubin=compiled.asm["cubin"],
        n_regs=int(registers.group(1)),
        spill_store_bytes=int(frame.group(2)),
        spill_load_bytes=int(frame.group(3)),
        stack_bytes=int(frame.group(1)),
        ptxas_log=text,
    )
