"""Ahead-of-time compilation of @triton.jit kernels for real NVIDIA targets, with no GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", capability, 32))`` runs the whole
pipeline (TTIR, TTGIR, LLVM IR, PTX, then the ``ptxas`` that ships inside the triton
wheel) without touching a driver. Register and spill counts are normally read from the
driver after loading the cubin; without one we take them from ptxas's ``-v`` report, which
Triton prints when ``TRITON_DUMP_PTXAS_LOG`` is set. The compilation cache would skip
ptxas (and the report), so these compiles always run the full pipeline. Shared memory comes
from the compiled kernel's metadata; a spec with ``sass=True`` also has its cubin
disassembled with the ``cuobjdump`` Triton ships, and its SASS opcodes counted.

The test process runs Triton under its interpreter (see tests/conftest.py), where kernels
cannot be compiled, so ``compile_in_child`` compiles a list of ``AotSpec`` in a child
Python started without TRITON_INTERPRET (this file run as a script).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CAPABILITIES = (80, 90)
_REGISTERS = re.compile(r"Used (\d+) registers")
_SASS_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass(frozen=True)
class AotSpec:
    """One kernel configuration to compile: ``kernel`` as ``"module:function"``;
    ``signature`` maps every parameter to a Triton type ("*fp32", "i64", "constexpr", ...);
    ``constexprs`` holds the constexpr values; ``options`` compile options (num_warps...).
    ``aligned``: every pointer argument is 16-byte aligned (``tt.divisibility`` 16), as the
    JIT specialises a launch on tensors from PyTorch's allocator; otherwise no alignment is
    assumed (a launch on an offset view, e.g. one layer's slice of a staging slot).
    ``divisible``: integer arguments that aligned builds also mark divisible by 16, as the
    JIT specialises an argument that is (e.g. a row length K = 768). ``sass``: count the
    SASS opcodes of the cubin (``AotResult.opcodes``). ``capabilities``: the architectures to
    compile for (a build only one of them runs, e.g. programmatic dependent launch on sm_90)."""

    label: str
    kernel: str
    signature: dict
    constexprs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    aligned: bool = False
    divisible: tuple = ()
    sass: bool = False
    capabilities: tuple = CAPABILITIES

    def pointer_attrs(self, arg_names: list[str]) -> dict:
        """ASTSource attrs marking the pointer arguments 16-byte aligned and the ``divisible``
        integers multiples of 16 (empty unless aligned)."""
        if not self.aligned:
            return {}
        return {(arg_names.index(name),): [["tt.divisibility", 16]]
                for name, kind in self.signature.items() if kind.startswith("*") or name in self.divisible}


@dataclass(frozen=True)
class AotResult:
    """One spec compiled for sm_<capability>: cubin size, registers per thread, spills
    (bytes per thread), the per-thread stack frame, shared memory per CTA (bytes), warps,
    and, for specs with ``sass``, how often each SASS opcode (with its modifiers, e.g.
    ``LDGSTS.E.BYPASS.128``) occurs and the opcodes in program order (``sequence``)."""

    label: str
    capability: int
    cubin_bytes: int
    elf: bool
    n_regs: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    shared_bytes: int = 0
    num_warps: int = 0
    opcodes: dict = field(default_factory=dict)
    sequence: tuple = ()

    def count(self, prefix: str) -> int:
        """Instructions whose opcode starts with ``prefix`` (e.g. "HGMMA")."""
        return sum(n for opcode, n in self.opcodes.items() if opcode.startswith(prefix))

    def count_before(self, prefix: str, marker: str) -> int:
        """Instructions starting with ``prefix`` that come before the first one starting with
        ``marker`` in the code (all of them when there is none)."""
        end = next((index for index, opcode in enumerate(self.sequence) if opcode.startswith(marker)),
                   len(self.sequence))
        return sum(opcode.startswith(prefix) for opcode in self.sequence[:end])

    def line(self) -> str:
        return (f"{self.label} sm_{self.capability}: {self.n_regs} registers, "
                f"{self.spill_store_bytes} B spill stores, {self.spill_load_bytes} B spill loads, "
                f"{self.stack_bytes} B stack, {self.shared_bytes} B shared, cubin {self.cubin_bytes} B")


def sass_sequence(cubin: bytes) -> list[str]:
    """The SASS opcodes of ``cubin`` in program order, disassembled by the cuobjdump Triton ships."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "kernel.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", str(path)], capture_output=True,
                              text=True, check=True).stdout
    return [match.group(1) for match in _SASS_INSTRUCTION.finditer(sass)]


def compile_for(spec: AotSpec, capability: int) -> AotResult:
    """Compile ``spec`` for sm_<capability> (e.g. 80, 90) in this (compiled-mode) process."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name = spec.kernel.split(":")
    kernel = getattr(importlib.import_module(module), name)
    source = ASTSource(fn=kernel, signature=spec.signature, constexprs=spec.constexprs,
                       attrs=spec.pointer_attrs(kernel.arg_names))
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=spec.options)
    text = log.getvalue()
    registers, frame = _REGISTERS.search(text), _FRAME.search(text)
    if registers is None or frame is None:
        raise RuntimeError(f"no register/spill report in the ptxas log of {spec.label}:\n{text}")
    cubin = compiled.asm["cubin"]
    sequence = sass_sequence(cubin) if spec.sass else []
    return AotResult(
        label=spec.label, capability=capability, cubin_bytes=len(cubin), elf=cubin[:4] == b"\x7fELF",
        n_regs=int(registers.group(1)), spill_store_bytes=int(frame.group(2)),
        spill_load_bytes=int(frame.group(3)), stack_bytes=int(frame.group(1)),
        shared_bytes=int(compiled.metadata.shared), num_warps=int(compiled.metadata.num_warps),
        opcodes=dict(Counter(sequence)), sequence=tuple(sequence),
    )


def compile_in_child(specs: list[AotSpec]) -> list[AotResult]:
    """Compile every spec for each of its capabilities in a compiled-mode child."""
    with tempfile.TemporaryDirectory() as scratch:
        request, answer = Path(scratch) / "specs.json", Path(scratch) / "results.json"
        request.write_text(json.dumps([asdict(spec) for spec in specs]))
        env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        child = subprocess.run([sys.executable, __file__, str(request), str(answer)], env=env,
                               capture_output=True, text=True, timeout=900)
        if child.returncode != 0:
            raise RuntimeError(f"AOT compilation failed:\n{child.stderr[-4000:]}")
        return [AotResult(**result) for result in json.loads(answer.read_text())]


def check_compiles(specs: list[AotSpec], workers: int = 1) -> list[AotResult]:
    """Compile ``specs`` for their capabilities (split over ``workers`` children), each both
    without and with 16-byte-aligned pointers (the two builds a GPU launch can get), print
    one line per result, and assert each gives an ELF cubin, a register count within the
    hardware's 255, and no register spills."""
    specs = [variant for spec in specs
             for variant in (spec, replace(spec, label=spec.label + " aligned", aligned=True))]
    shares = [list(specs[start::workers]) for start in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        results = [result for share in pool.map(compile_in_child, shares) for result in share]
    assert len(results) == sum(len(spec.capabilities) for spec in specs)
    for result in sorted(results, key=lambda r: (r.label, r.capability)):
        print("\n" + result.line(), end="")
        assert result.elf and result.cubin_bytes > 0, result.line()
        assert 0 < result.n_regs <= 255, result.line()
        assert result.spill_store_bytes == 0 and result.spill_load_bytes == 0, result.line()
    print()
    return results


if __name__ == "__main__":
    specs = [AotSpec(**spec) for spec in json.loads(Path(sys.argv[1]).read_text())]
    results = [asdict(compile_for(spec, capability)) for spec in specs for capability in spec.capabilities]
    Path(sys.argv[2]).write_text(json.dumps(results))
