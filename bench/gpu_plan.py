"""The Triton engine's kernels of one iteration on a GPU we may not have: plan, compiled code, time.

For a model, M = rows, an architecture, a dtype and a product precision this lists every
kernel one consensus iteration launches (the grid from the launchers' own plan functions:
``linear.split_k``, ``consensus_metric.gram_splits``, ...), compiles each ahead of time for
that architecture (Triton's whole pipeline and ptxas, no GPU; cubins written under
``--dump-dir``), reads registers, spills and shared memory, counts HGMMA, HMMA, FFMA, LDGSTS
and UTMALDG in its SASS (the ``cuobjdump`` Triton ships), and predicts its time:

    kernel = KERNEL_FIXED_US + max(bytes / bandwidth, waves · resident · t_cta, waves · steps · DEPENDENT_STEP_US)
    t_cta  = steps · max(FMA cycles, tensor cycles, shared-memory wavefronts) / clock

steps: the K loop's trip count per CTA; waves = ⌈CTAs / (SMs · CTAs per SM)⌉ and resident =
the CTAs sharing one SM's pipes (min(CTAs per SM, ⌈CTAs / SMs⌉)). The per-step terms come
from the compiled code: a ``tl.dot`` with FFMA and no MMA in its SASS runs BM·BN·BK FMAs on
the FP32 lanes; HMMA (mma.sync) or HGMMA (wgmma) run 2·BM·BN·BK flops per TF32 pass (three
for tf32x3) at the tensor rate; the shared-memory wavefronts of the FMA path are counted by
replaying, for one warp, every operand load the dot's ttgir layout implies (each lane's
elements, vectorised along the buffer's contiguous dimension, addresses through the
buffer's swizzle) against 32 four-byte banks: an unswizzled 128-byte-row W buffer read by
32 lanes of 32 different rows costs 32 wavefronts per LDS.128. Kernels with no dot in a
K loop (split-K finish, LayerNorm rows, attention of a short prompt, finalize) cost the fixed
term plus their bytes. Not modelled: the LayerNorm prologue of ``ln_linear`` (``row_stats``),
L2 hits, clock throttling; on the tensor-core path the operands' shared reads are taken as
conflict-free (each operand byte read twice), not replayed.

A kernel joins the plan as one more function returning ``Launch``es (its AotSpec, the grid
from its launcher's plan function, the dot tile, K steps per CTA and bytes) called from
``block_launches``; compiling, SASS counts, CTAs per SM and the model then apply as they are.

Constants set once (their sources beside them): the GPUs' rates, KERNEL_FIXED_US and
DEPENDENT_STEP_US. ``--calibrate`` compiles the kernels that were measured on the H200
(bench/RESULTS.md: gpt2-xl, 27 rows, fp32 IEEE, Triton 3.6; the Gram then ran unsplit) and
prints predicted against measured.

Usage: python bench/gpu_plan.py [--model gpt2-xl] [--rows 27] [--arch sm_90] [--dtype fp32]
           [--precision tf32x3|ieee|tf32] [--json] [--dump-dir DIR] [--calibrate]
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # compiled mode: this script compiles for real GPUs

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests" / "kernels")]

import triton  # noqa: E402

from aot import _FRAME, _REGISTERS, AotSpec  # noqa: E402
from gpt2fast.backends import TRITON_PRECISION  # noqa: E402
from gpt2fast.config import PRESETS, ModelConfig  # noqa: E402
from gpt2fast.kernels import attention, consensus_metric, linear  # noqa: E402
from gpt2fast.weights import linear_shapes  # noqa: E402
from roofline import block_parameters  # noqa: E402


@dataclass(frozen=True)
class Gpu:
    """Per-SM resources and rates of one architecture (dense, boost clock)."""

    name: str
    capability: int
    sms: int
    clock_hz: float
    bandwidth: float  # bytes/s, achievable copy bandwidth
    fp32_lanes: int  # FFMA lanes per SM: FFMA warp instructions per clock = lanes / 32
    tf32_flops_per_clock: int  # per SM, wgmma (sm_90) or mma.sync (sm_80) at full rate
    mma_sync_fraction: float  # mma.sync's share of that rate (HMMA where HGMMA exists)
    shared_per_sm: int  # bytes an SM can give its CTAs
    registers: int = 65536
    max_threads: int = 2048
    max_ctas: int = 32
    shared_reserved: int = 1024  # per CTA, taken by the driver


ARCHS = {
    # H200 SXM: 132 SMs at up to 1980 MHz; 4.1 TB/s measured copy bandwidth (bench/RESULTS.md,
    # 4108-4133 GB/s); TF32 dense 494.7 TFLOP/s at 1830 MHz (H100/H200 datasheet) = 2048 flops
    # per SM per clock via wgmma, mma.sync at about half of it on Hopper; 228 KB shared per SM.
    "sm_90": Gpu("H200 (sm_90)", 90, 132, 1.98e9, 4.108e12, 128, 2048, 0.5, 233472),
    # A100 SXM 80 GB: 108 SMs at 1410 MHz; 2.039 TB/s datasheet HBM bandwidth times the H200's
    # measured/datasheet ratio (4.108 / 4.8 = 0.856) = 1.75 TB/s, not measured; TF32 dense 156
    # TFLOP/s = 1024 flops per SM per clock (mma.sync is its tensor instruction); 64 FP32
    # lanes per SM; 164 KB shared per SM.
    "sm_80": Gpu("A100 (sm_80)", 80, 108, 1.41e9, 2.039e12 * 4.108 / 4.8, 64, 1024, 1.0, 167936),
}

# The duration of a kernel that does almost nothing, set once from the H200 profile
# (bench/RESULTS.md, per call): unit_rows_kernel 2.9 us, split_k_finish_kernel 3.6 us,
# finalize_kernel 1.25 us, whose bytes take < 0.5 us: their median, 2.9 us. It stands for
# launch, ramp-up and drain at each kernel boundary of the replayed graph.
KERNEL_FIXED_US = 2.9
# The shortest time of one trip of a K loop (its loads' round trip, with Triton's default
# pipelining): the unsplit gram_tiles_kernel took 34 us on the H200 for 4 CTAs walking
# C = 1600 in 50 steps of BK = 32 (commit 67e7bd8), (34 - 2.9) / 50 = 0.62 us per step. The
# Gram's agreement in --calibrate is therefore its fit, not a check.
DEPENDENT_STEP_US = 0.62

# bench/RESULTS.md, "GPU: NVIDIA H200": one eager Triton iteration of gpt2-xl at 27 rows,
# fp32 IEEE (ms per iteration, by kernel), and the replayed graph of the whole iteration.
MEASURED_H200_MS = {
    "fused_linear_kernel": 20.06,
    "gram_tiles_kernel": 1.61,
    "split_k_finish_kernel": 0.70,
    "causal_attention_kernel": 0.22,
    "unit_rows_kernel": 0.14,
    "finalize_kernel": 0.06,
}
MEASURED_H200_ITERATION_MS = 23.0
# The GEMM config of the calibration: the autotuner's choice on the H200 was not recorded.
# linear.DEFAULT_CONFIG (BLOCK_N = 64, BLOCK_K = 32, 8 warps) is the build issue 12 analysed
# (270 FFMA, 8 KB K-steps, 32-way W conflicts); the model predicts the BLOCK_N = 32 configs
# twice as fast, which the autotuner, taking the fastest measured, would then have chosen:
# either it did not see them faster on the GPU (a miss of this model for them) or Triton 3.6
# laid them out differently. The next GPU session records the chosen configs.
CALIBRATION_CONFIG = linear.DEFAULT_CONFIG
CALIBRATION_TOLERANCE = 0.15
CALIBRATION_MUST_MATCH = ("fused_linear_kernel", "iteration")  # the figures the model must reproduce
INSTRUCTIONS = ("HGMMA", "HMMA", "FFMA", "LDGSTS", "UTMALDG")
BYTES = {"fp32": 4, "bf16": 2}


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a block: what to compile and the work its grid does.

    ``divisible``: the integer arguments the JIT specialises as multiples of 16 (N, K, ...);
    ``dot``: (BM, BN, BK) of the ``tl.dot`` in its K loop (None: no dot worth modelling);
    ``steps``: that loop's trips per CTA; ``bytes``: global bytes moved per launch."""

    name: str
    role: str
    spec: AotSpec
    grid: tuple[int, ...]
    per_block: int
    precision: str
    bytes: int
    steps: int = 0
    dot: tuple[int, int, int] | None = None
    divisible: tuple[str, ...] = ()


# --- the launch plan of one iteration (the launchers' own plan functions) ---------------

def _pointer(dtype: str) -> str:
    return f"*{dtype}"


def gemm_spec(config: triton.Config, block_m: int, dtype: str, flags: dict) -> AotSpec:
    """fused_linear_kernel as the launcher calls it (tests/kernels/test_linear.py's signature)."""
    pointer = _pointer(dtype)
    signature = {name: pointer for name in ("x_ptr", "w_ptr", "b_ptr", "ln_w_ptr", "ln_b_ptr", "res_ptr", "out_ptr")}
    signature |= {"part_ptr": "*fp32", "iteration_ptr": "*i64", "M": "i32", "N": "i32", "K": "i32",
                  "k_per_split": "i32", "key": "u64", "stream": "u32", "step": "u64", "steps_per_iteration": "u64"}
    constexprs = flags | {"BLOCK_M": block_m, **config.kwargs}
    signature |= {name: "constexpr" for name in constexprs}
    return AotSpec(label=f"fused_linear_kernel {config.kwargs} warps={config.num_warps} {flags}",
                   kernel="gpt2fast.kernels.linear:fused_linear_kernel", signature=signature,
                   constexprs=constexprs, options={"num_warps": config.num_warps, "num_stages": config.num_stages},
                   aligned=True)


def gemm_launches(cfg: ModelConfig, rows: int, dtype: str, precision: str, sms: int,
                  config: triton.Config) -> list[Launch]:
    """The four GEMMs of a block (stored weights) with ``config``, and their split-K finishes."""
    size = BYTES[dtype]
    launches = []
    for role, (n, k) in linear_shapes(cfg).items():
        ln, gelu, residual = role.endswith("c_attn") or role == "mlp.c_fc", role == "mlp.c_fc", role.endswith("c_proj")
        splits, k_per_split = linear.split_k(rows, n, k, sms)
        tile_m = linear.block_m(rows)
        flags = dict(LN=ln, GELU=gelu and splits == 1, RESIDUAL=residual and splits == 1, DRAWN=False,
                     STEP_IN_MEMORY=False, PARTIAL=splits > 1, PRECISION=precision if dtype == "fp32" else "tf32")
        grid = (triton.cdiv(rows, tile_m), triton.cdiv(n, config.kwargs["BLOCK_N"]), splits)
        out_bytes = splits * rows * n * 4 if splits > 1 else rows * n * size * (2 if residual else 1)
        divisible = tuple(name for name, value in (("N", n), ("K", k), ("k_per_split", k_per_split)) if value % 16 == 0)
        launches.append(Launch(
            "fused_linear_kernel", role, gemm_spec(config, tile_m, dtype, flags), grid, 1,
            flags["PRECISION"], n * k * size + rows * k * size + out_bytes,
            steps=triton.cdiv(k_per_split, config.kwargs["BLOCK_K"]),
            dot=(tile_m, config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]), divisible=divisible))
        if splits > 1:
            finish_flags = dict(HAS_BIAS=True, GELU=gelu, RESIDUAL=residual,
                                BLOCK_M=linear.FINISH_BLOCK_M, BLOCK_N=linear.FINISH_BLOCK_N)
            pointer = _pointer(dtype)
            spec = AotSpec(label=f"split_k_finish_kernel {finish_flags}",
                           kernel="gpt2fast.kernels.linear:split_k_finish_kernel",
                           signature={"part_ptr": "*fp32", "b_ptr": pointer, "res_ptr": pointer, "out_ptr": pointer,
                                      "M": "i32", "N": "i32", "splits": "i32"}
                           | dict.fromkeys(finish_flags, "constexpr"),
                           constexprs=finish_flags, options={"num_warps": linear.FINISH_NUM_WARPS}, aligned=True)
            grid = (triton.cdiv(n, linear.FINISH_BLOCK_N), triton.cdiv(rows, linear.FINISH_BLOCK_M))
            launches.append(Launch("split_k_finish_kernel", role, spec, grid, 1, "-",
                                   splits * rows * n * 4 + rows * n * size * (2 if residual else 1) + n * size,
                                   divisible=("N",) if n % 16 == 0 else ()))
    return launches


def attention_launch(cfg: ModelConfig, lengths: list[int], dtype: str, precision: str) -> Launch:
    length, size = max(lengths), BYTES[dtype]
    block_m, block_n, warps = attention.causal_config(length)
    used = "tf32" if dtype == "bf16" else precision
    constexprs = {"HEAD_DIM": attention.HEAD_DIM, "BLOCK_M": block_m, "BLOCK_N": block_n, "INPUT_PRECISION": used}
    spec = AotSpec(label=f"causal_attention_kernel {constexprs}",
                   kernel="gpt2fast.kernels.attention:causal_attention_kernel",
                   signature={"qkv_ptr": _pointer(dtype), "lengths_ptr": "*i64", "out_ptr": _pointer(dtype),
                              "length": "i32", "n_head": "i32", "scale": "fp32"}
                   | dict.fromkeys(constexprs, "constexpr"),
                   constexprs=constexprs, options={"num_warps": warps}, aligned=True)
    grid = (triton.cdiv(length, block_m), len(lengths) * cfg.n_head)
    return Launch("causal_attention_kernel", "attention", spec, grid, 1, used,
                  len(lengths) * length * 4 * cfg.n_embd * size)


def metric_launches(cfg: ModelConfig, lengths: list[int], dtype: str, precision: str,
                    split_gram: bool = True) -> list[Launch]:
    """``consensus_metric``'s kernels; ``split_gram=False``: the Gram as it ran on the H200
    (one slice of C, no combine kernel)."""
    n_prompts, length, width = len(lengths), max(lengths), cfg.n_embd
    block_c = triton.next_power_of_2(width)
    rows_constexprs = {"BLOCK_C": block_c}
    unit_rows = AotSpec(
        label=f"unit_rows_kernel BLOCK_C={block_c}", kernel="gpt2fast.kernels.consensus_metric:unit_rows_kernel",
        signature={"x_ptr": _pointer(dtype), "w_ptr": _pointer(dtype), "b_ptr": _pointer(dtype), "lengths_ptr": "*i64",
                   "unit_ptr": "*fp32", "T": "i32", "C": "i32", "eps": "fp32", "BLOCK_C": "constexpr"},
        constexprs=rows_constexprs, options={"num_warps": consensus_metric.unit_rows_warps(block_c)}, aligned=True)
    config = consensus_metric.gram_block(length)
    n_blocks = triton.cdiv(length, config.block_t)
    if split_gram:
        splits, k_per_slice = consensus_metric.gram_splits(n_prompts, n_blocks, width, config)
    else:
        splits, k_per_slice = 1, triton.cdiv(width, config.block_k) * config.block_k
    gram_constexprs = {"WRITE_GRAM": True, "SPLIT": splits > 1, "BT": config.block_t, "BK": config.block_k,
                       "PRECISION": precision}
    gram = AotSpec(
        label=f"gram_tiles_kernel {gram_constexprs}", kernel="gpt2fast.kernels.consensus_metric:gram_tiles_kernel",
        signature={"unit_ptr": "*fp32", "lengths_ptr": "*i64", "gram_ptr": "*fp32", "partial_ptr": "*fp32",
                   "slices_ptr": "*fp32", "T": "i32", "C": "i32", "k_per_slice": "i32", "stride_gp": "i32",
                   "stride_gs": "i32", "stride_gt": "i32"} | dict.fromkeys(gram_constexprs, "constexpr"),
        constexprs=gram_constexprs, options={"num_warps": config.num_warps}, aligned=True)
    side = n_blocks * config.block_t
    launches = [
        Launch("unit_rows_kernel", "metric", unit_rows, (length, n_prompts), 1, "-",
               n_prompts * length * width * (BYTES[dtype] + 4)),
        Launch("gram_tiles_kernel", "metric", gram, (n_blocks, n_blocks, n_prompts * splits), 1, precision,
               n_prompts * length * width * 4 + n_prompts * splits * side * side * 4,
               steps=triton.cdiv(k_per_slice, config.block_k), dot=(config.block_t, config.block_t, config.block_k),
               divisible=("C",) if width % 16 == 0 else ()),
    ]
    if splits > 1:
        combine_constexprs = {"WRITE_GRAM": True, "BT": config.block_t}
        combine = AotSpec(
            label=f"gram_combine_kernel {combine_constexprs}",
            kernel="gpt2fast.kernels.consensus_metric:gram_combine_kernel",
            signature={"slices_ptr": "*fp32", "lengths_ptr": "*i64", "gram_ptr": "*fp32", "partial_ptr": "*fp32",
                       "T": "i32", "n_slices": "i32", "stride_gp": "i32", "stride_gs": "i32", "stride_gt": "i32"}
            | dict.fromkeys(combine_constexprs, "constexpr"),
            constexprs=combine_constexprs, options={"num_warps": consensus_metric.COMBINE_WARPS}, aligned=True)
        launches.append(Launch("gram_combine_kernel", "metric", combine, (n_blocks, n_blocks, n_prompts), 1, "-",
                               n_prompts * splits * side * side * 4))
    finalize_constexprs = {"BLOCK": consensus_metric.FINALIZE_BLOCK}
    finalize = AotSpec(
        label="finalize_kernel", kernel="gpt2fast.kernels.consensus_metric:finalize_kernel",
        signature={"partial_ptr": "*fp32", "lengths_ptr": "*i64", "err_ptr": "*fp32", "n_tiles": "i32",
                   "stride_ep": "i32", "stride_ek": "i32", "BLOCK": "constexpr"},
        constexprs=finalize_constexprs, options={"num_warps": 4}, aligned=True)
    launches.append(Launch("finalize_kernel", "metric", finalize, (n_prompts,), 1, "-", n_prompts * n_blocks ** 2 * 8))
    return launches


def block_launches(cfg: ModelConfig, lengths: list[int], dtype: str, precision: str, sms: int,
                   config: triton.Config = linear.DEFAULT_CONFIG, split_gram: bool = True) -> list[Launch]:
    """Every launch of one block of ``TritonEngine.iteration`` (stored weights, with the metric),
    in launch order, the GEMMs with ``config``."""
    gemms = gemm_launches(cfg, len(lengths) * max(lengths), dtype, precision, sms, config)  # padded prompts
    c_attn = [launch for launch in gemms if launch.role == "attn.c_attn"]
    rest = [launch for launch in gemms if launch.role != "attn.c_attn"]
    return (c_attn + [attention_launch(cfg, lengths, dtype, precision)] + rest
            + metric_launches(cfg, lengths, dtype, precision, split_gram))


# --- compiled code --------------------------------------------------------------------

@dataclass(frozen=True)
class Compiled:
    """What the compiled kernel says: resources, SASS counts, the dot's shared-memory cost."""

    regs: int
    spills: int
    shared_bytes: int
    warps: int
    instructions: dict
    dot_path: str  # "fma", "hmma", "hgmma" or "none"
    wavefronts_per_dot: int  # shared-memory wavefronts of one dot's operand loads, whole CTA
    cubin: str


_SASS = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")
_LOCAL_LOAD = re.compile(r"ttg\.local_load .*?!ttg\.memdesc<(\d+)x(\d+)x\w+, #(\w+).*?-> tensor<\d+x\d+x\w+, "
                         r"#ttg\.dot_op<\{opIdx = (\d), parent = #(\w+)")
_ENCODING = re.compile(r"^#(\w+) = #ttg\.(\w+)<\{(.*)\}>", re.M)


def _encoding_fields(body: str) -> dict[str, list[int]]:
    return {key: [int(v) for v in re.findall(r"\d+", value)]
            for key, value in re.findall(r"(\w+) = (\[[^\]]*\]|\d+)", body)}


def _lane_coords(lane: int, tpw: list[int], order: list[int]) -> list[int]:
    coords = [0, 0]
    fast, slow = order
    coords[fast], coords[slow] = lane % tpw[fast], lane // tpw[fast]
    return coords


def operand_wavefronts(shape: tuple[int, int], op_index: int, shared: dict, parent: dict, warps: int) -> int:
    """Shared-memory wavefronts of one FMA-path dot operand load for the whole CTA.

    The operand (opIdx 0: A [M, K]; 1: B [K, N]) sits in a buffer of ``shape`` with the
    swizzled_shared fields ``shared`` (vec, perPhase, maxPhase, order); the dot's parent
    blocked layout ``parent`` gives each lane its rows of A (columns of B) over all of K.
    Every lane's elements are loaded in vectors of up to 16 bytes along the buffer's
    contiguous dimension; a load costs max(distinct words in one bank, bytes / 128)."""
    spt, tpw, wpc, order = parent["sizePerThread"], parent["threadsPerWarp"], parent["warpsPerCTA"], parent["order"]
    dim = 0 if op_index == 0 else 1  # the output dimension this operand varies along (M or N)
    k_axis = 1 - dim  # K's axis in the operand's [.., ..] shape (A: 1, B: 0)
    span = spt[dim] * tpw[dim] * wpc[dim]
    extent = shape[dim if op_index == 0 else 1]
    k_extent = shape[k_axis]
    vec, per_phase, max_phase = shared["vec"][0], shared["perPhase"][0], shared["maxPhase"][0]
    fast = shared["order"][0]
    width = shape[fast]

    def word(coords: tuple[int, int]) -> int:
        row, col = coords[1 - fast], coords[fast]
        phase = (row // per_phase) % max_phase
        return row * width + ((col // vec) ^ phase) * vec + col % vec

    def lane_values(lane: int, warp: int) -> list[int]:
        lane_at = _lane_coords(lane, tpw, order)[dim]
        warp_at = _lane_coords(warp, wpc, order)[dim]
        return sorted({(rep * span + warp_at * spt[dim] * tpw[dim] + lane_at * spt[dim] + i) % extent
                       for rep in range(max(1, extent // span)) for i in range(spt[dim])})

    run = 4 if (fast == k_axis and max_phase == 1) else (min(4, vec) if fast == k_axis else 1)
    total = 0
    for warp in range(warps):
        per_lane = [lane_values(lane, warp) for lane in range(32)]
        for index in range(len(per_lane[0])):
            for k0 in range(0, k_extent, run):
                words = set()
                for values in per_lane:
                    for k in range(k0, min(k0 + run, k_extent)):
                        coords = [0, 0]
                        coords[dim if op_index == 0 else 1] = values[index]
                        coords[k_axis] = k
                        words.add(word((coords[0], coords[1])))
                banks = Counter(w % 32 for w in words)
                total += max(max(banks.values()), math.ceil(len(words) * 4 / 128))
    return total


def dot_wavefronts(ttgir: str, warps: int) -> int:
    """Wavefronts of both operand loads of the FMA-path dot in ``ttgir`` (0 if none)."""
    encodings = {name: (kind, _encoding_fields(body)) for name, kind, body in _ENCODING.findall(ttgir)}
    total = 0
    for rows, cols, shared, op_index, parent in _LOCAL_LOAD.findall(ttgir):
        shared_kind, shared_fields = encodings[shared]
        parent_kind, parent_fields = encodings[parent]
        if shared_kind != "swizzled_shared" or parent_kind != "blocked":
            continue
        total += operand_wavefronts((int(rows), int(cols)), int(op_index), shared_fields, parent_fields, warps)
    return total


def _divisibility(spec: AotSpec, arg_names: list[str], divisible: tuple[str, ...]) -> dict:
    """16-byte-aligned pointers (spec.aligned) and the integers the JIT would mark divisible by 16."""
    attrs = spec.pointer_attrs(arg_names)
    attrs |= {(arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    return attrs


def compile_launch(launch: Launch, gpu: Gpu, dump_dir: Path) -> Compiled:
    """Compile ``launch.spec`` for ``gpu`` (or reuse the result under ``dump_dir``)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    key = json.dumps([asdict(launch.spec), launch.divisible, gpu.capability], sort_keys=True, default=str)
    stem = dump_dir / f"{launch.name}-sm_{gpu.capability}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    record = stem.with_suffix(".json")
    if record.exists():
        return Compiled(**json.loads(record.read_text()))
    module, name = launch.spec.kernel.split(":")
    kernel = getattr(importlib.import_module(module), name)
    source = ASTSource(fn=kernel, signature=launch.spec.signature, constexprs=launch.spec.constexprs,
                       attrs=_divisibility(launch.spec, kernel.arg_names, launch.divisible))
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(source, target=GPUTarget("cuda", gpu.capability, 32), options=launch.spec.options)
    text = log.getvalue()
    registers, frame = _REGISTERS.search(text), _FRAME.search(text)
    cubin = compiled.asm["cubin"]
    stem.with_suffix(".cubin").write_bytes(cubin)
    stem.with_suffix(".ttgir").write_text(compiled.asm["ttgir"])
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "kernel.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout
    opcodes = Counter(_SASS.findall(sass))
    instructions = {name: opcodes[name] for name in INSTRUCTIONS}
    warps = int(compiled.metadata.num_warps)
    if launch.dot is None:
        path_name, wavefronts = "none", 0
    elif instructions["HGMMA"]:
        path_name, wavefronts = "hgmma", 0
    elif instructions["HMMA"]:
        path_name, wavefronts = "hmma", 0
    else:
        path_name, wavefronts = "fma", dot_wavefronts(compiled.asm["ttgir"], warps)
    result = Compiled(regs=int(registers.group(1)), spills=int(frame.group(2)) + int(frame.group(3)),
                      shared_bytes=int(compiled.metadata.shared), warps=warps,
                      instructions=instructions,
                      dot_path=path_name, wavefronts_per_dot=wavefronts, cubin=str(stem.with_suffix(".cubin")))
    record.write_text(json.dumps(asdict(result)))
    return result


# --- the model --------------------------------------------------------------------------

def ctas_per_sm(compiled: Compiled, gpu: Gpu) -> int:
    """Resident CTAs per SM allowed by registers (256-register warp granules), shared memory and threads."""
    per_warp = math.ceil(compiled.regs * 32 / 256) * 256
    by_registers = gpu.registers // (per_warp * compiled.warps)
    by_shared = gpu.shared_per_sm // (compiled.shared_bytes + gpu.shared_reserved)
    by_threads = gpu.max_threads // (32 * compiled.warps)
    return max(1, min(by_registers, by_shared, by_threads, gpu.max_ctas))


def predict(launch: Launch, compiled: Compiled, gpu: Gpu) -> dict:
    """Predicted microseconds of one launch, with the terms that set it."""
    ctas = math.prod(launch.grid)
    per_sm = ctas_per_sm(compiled, gpu)
    waves = math.ceil(ctas / (gpu.sms * per_sm))
    resident = min(per_sm, math.ceil(ctas / gpu.sms))
    terms = {"memory": launch.bytes / gpu.bandwidth * 1e6}
    if launch.dot is not None and launch.steps:
        bm, bn, bk = launch.dot
        step = {"shared": compiled.wavefronts_per_dot}
        if compiled.dot_path == "fma":
            step["fma"] = bm * bn * bk / gpu.fp32_lanes
        elif compiled.dot_path in ("hmma", "hgmma"):
            passes = 3 if launch.precision == "tf32x3" else 1
            rate = gpu.tf32_flops_per_clock * (1.0 if compiled.dot_path == "hgmma" else gpu.mma_sync_fraction)
            step["tensor"] = 2 * bm * bn * bk * passes / rate
            step["shared"] = (bm + bn) * bk * 4 * 2 / 128  # swizzled operands, each read by two warps
        bound = max(step, key=step.get)
        throughput_us = launch.steps * step[bound] / gpu.clock_hz * 1e6
        latency_us = launch.steps * DEPENDENT_STEP_US
        # co-resident CTAs share the SM's pipes but wait for their loads side by side
        terms[bound] = waves * resident * throughput_us
        terms["latency"] = waves * latency_us
    bound = max(terms, key=terms.get)
    return {"ctas": ctas, "ctas_per_sm": per_sm, "waves": waves, "bound": bound,
            "predicted_us": round(KERNEL_FIXED_US + terms[bound], 2)}


def kernel_row(launch: Launch, layers: int, gpu: Gpu, dump_dir: Path, config: str | None = None) -> dict:
    compiled = compile_launch(launch, gpu, dump_dir)
    row = {"name": launch.name, "role": launch.role, "launches_per_iteration": launch.per_block * layers,
           "grid": list(launch.grid), "precision": launch.precision, "regs": compiled.regs, "spills": compiled.spills,
           "shared_bytes": compiled.shared_bytes, "warps": compiled.warps, "instructions": compiled.instructions,
           "dot_path": compiled.dot_path, "shared_wavefronts_per_step": compiled.wavefronts_per_dot}
    row |= predict(launch, compiled, gpu)
    row["config"] = config
    row["cubin"] = compiled.cubin
    return row


def _config_name(config: triton.Config) -> str:
    return (f"BLOCK_N={config.kwargs['BLOCK_N']} BLOCK_K={config.kwargs['BLOCK_K']} "
            f"warps={config.num_warps} stages={config.num_stages}")


def plan(cfg: ModelConfig, lengths: list[int], arch: str, dtype: str, precision: str, dump_dir: Path,
         split_gram: bool = True, config: triton.Config | None = None) -> dict:
    """The report: every kernel of one iteration with its compiled facts and predicted time.
    Each GEMM takes ``config``, or by default the one of CONFIGS the model predicts fastest
    (on a GPU the autotuner takes the fastest measured)."""
    gpu = ARCHS[arch]
    dump_dir.mkdir(parents=True, exist_ok=True)
    layers = cfg.n_layer
    used = precision if dtype == "fp32" else TRITON_PRECISION[dtype]  # --precision is for fp32 runs
    by_config = {id(c): block_launches(cfg, lengths, dtype, used, gpu.sms, c, split_gram) for c in linear.CONFIGS}
    rows = []
    for index, launch in enumerate(by_config[id(linear.DEFAULT_CONFIG)]):
        if launch.name != "fused_linear_kernel":
            rows.append(kernel_row(launch, layers, gpu, dump_dir))
            continue
        candidates = [kernel_row(by_config[id(c)][index], layers, gpu, dump_dir, _config_name(c))
                      for c in ([config] if config is not None else linear.CONFIGS)]
        rows.append(min(candidates, key=lambda row: row["predicted_us"]))
    weight_bytes = layers * block_parameters(cfg) * BYTES[dtype]
    predicted_ms = sum(row["predicted_us"] * row["launches_per_iteration"] for row in rows) / 1e3
    return {
        "model": next((name for name, preset in PRESETS.items() if preset == cfg), "custom"),
        "rows": len(lengths) * max(lengths), "arch": arch, "gpu": gpu.name, "dtype": dtype, "precision": precision,
        "engine_default_precision": TRITON_PRECISION[dtype],  # what a run without a precision flag uses today
        "kernel_precisions": sorted({row["precision"] for row in rows} - {"-"}),
        "floor_ms": round(weight_bytes / gpu.bandwidth * 1e3, 3),
        "predicted_ms": round(predicted_ms, 3),
        "launches_per_block": sum(launch.per_block for launch in by_config[id(linear.DEFAULT_CONFIG)]),
        "launches_per_iteration": sum(row["launches_per_iteration"] for row in rows),
        "constants": {"KERNEL_FIXED_US": KERNEL_FIXED_US, "DEPENDENT_STEP_US": DEPENDENT_STEP_US,
                      "clock_hz": gpu.clock_hz, "bandwidth": gpu.bandwidth, "sms": gpu.sms},
        "kernels": rows,
    }


def calibrate(dump_dir: Path) -> dict:
    """Predicted against measured for the H200 run of bench/RESULTS.md (gpt2-xl, one 27-token
    prompt, fp32 IEEE, the Gram unsplit as it was then)."""
    by_config = {_config_name(c): plan(PRESETS["gpt2-xl"], [27], "sm_90", "fp32", "ieee", dump_dir, split_gram=False,
                                       config=c) for c in linear.CONFIGS}
    report = by_config[_config_name(CALIBRATION_CONFIG)]
    predicted_ms: dict[str, float] = {}
    for row in report["kernels"]:
        total = row["predicted_us"] * row["launches_per_iteration"] / 1e3
        predicted_ms[row["name"]] = predicted_ms.get(row["name"], 0.0) + total
    entries = [(name, predicted_ms.get(name, 0.0), measured) for name, measured in MEASURED_H200_MS.items()]
    entries.append(("iteration", report["predicted_ms"], MEASURED_H200_ITERATION_MS))
    rows = [{"kernel": name, "predicted_ms": round(predicted, 3), "measured_ms": measured,
             "ratio": round(predicted / measured, 3), "must_match": name in CALIBRATION_MUST_MATCH,
             "within_tolerance": abs(predicted / measured - 1) <= CALIBRATION_TOLERANCE}
            for name, predicted, measured in entries]
    gemm_ms = {name: round(sum(row["predicted_us"] * row["launches_per_iteration"] for row in other["kernels"]
                               if row["name"] == "fused_linear_kernel") / 1e3, 3) for name, other in by_config.items()}
    return {"calibration": rows, "tolerance": CALIBRATION_TOLERANCE, "config": _config_name(CALIBRATION_CONFIG),
            "gemm_ms_by_config": gemm_ms, "report": report}


# --- output -----------------------------------------------------------------------------

def print_table(report: dict) -> None:
    print(f"{report['model']}, {report['rows']} rows, {report['gpu']}, {report['dtype']}, "
          f"precision {report['precision']} "
          f"(kernels use {', '.join(report['kernel_precisions'])}; today's engine runs "
          f"{report['engine_default_precision']}): floor {report['floor_ms']} ms, predicted "
          f"{report['predicted_ms']} ms, {report['launches_per_block']} launches per block, "
          f"{report['launches_per_iteration']} per iteration")
    header = ("kernel", "role", "launches", "grid", "CTA/SM", "waves", "regs", "spills", "shared", *INSTRUCTIONS,
              "bound", "us", "ms/iter")
    print(" | ".join(header))
    for row in report["kernels"]:
        cells = (row["name"], row["role"], row["launches_per_iteration"], "x".join(map(str, row["grid"])),
                 row["ctas_per_sm"], row["waves"], row["regs"], row["spills"], row["shared_bytes"],
                 *(row["instructions"][name] for name in INSTRUCTIONS), row["bound"], row["predicted_us"],
                 round(row["predicted_us"] * row["launches_per_iteration"] / 1e3, 3))
        print(" | ".join(map(str, cells)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-xl", choices=sorted(PRESETS))
    parser.add_argument("--rows", type=int, default=27, help="M = tokens of one prompt")
    parser.add_argument("--arch", default="sm_90", choices=sorted(ARCHS))
    parser.add_argument("--dtype", default="fp32", choices=sorted(BYTES))
    parser.add_argument("--precision", default="tf32x3", choices=("ieee", "tf32x3", "tf32"),
                        help="fp32 product precision (bf16 always multiplies as TF32, exactly)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dump-dir", type=Path, default=None, help="where the cubins go (and are reused from)")
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        dump_dir = args.dump_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.calibrate:
            result = calibrate(dump_dir)
            if args.json:
                print(json.dumps(result))
                return
            print_table(result["report"])
            print("\nkernel | predicted ms | measured ms (H200) | predicted / measured")
            for row in result["calibration"]:
                print(f"{row['kernel']} | {row['predicted_ms']} | {row['measured_ms']} | {row['ratio']}")
            print(f"\nGEMMs with {result['config']} above; fused_linear_kernel ms per iteration by config:")
            for name, ms in result["gemm_ms_by_config"].items():
                print(f"{name} | {ms}")
            return
        report = plan(PRESETS[args.model], [args.rows], args.arch, args.dtype, args.precision, dump_dir)
        if args.json:
            print(json.dumps(report))
        else:
            print_table(report)


if __name__ == "__main__":
    main()
