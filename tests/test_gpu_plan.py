"""bench/gpu_plan.py, the GPU launch plan and performance model, checked without a GPU.

One temporary dump directory serves the whole module: the calibration compiles the kernels
measured on the H200 once (sm_90, in a compiled-mode child), and the gpt2 and gpt2-xl
reports reuse its cubins where their kernels are the same builds. The launch count the plan
reports is compared with the launches of today's Triton engine under the interpreter. Its
skinny GEMMs are checked for their tensor-core builds, programmatic dependent launches and
the prediction against the engine measured on the H200 (``--gemm fused``), and the skinny
plan for wave efficiency on 132 SMs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from gpt2fast.backends.triton_backend import TritonEngine
from gpt2fast.kernels import skinny_linear
from gpt2fast.kernels.linear import CPU_SM_COUNT
from gpt2fast.weight_stream import WeightStream
from tiny_models import tiny_config, tiny_state

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_plan  # noqa: E402

KERNEL_FIELDS = {"name": str, "launches_per_iteration": int, "grid": list, "ctas_per_sm": int, "regs": int,
                 "spills": int, "shared_bytes": int, "instructions": dict, "predicted_us": float, "cubin": str}


@pytest.fixture(scope="module")
def dump_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu-plan")


def run_plan(*args: str) -> dict:
    """``bench/gpu_plan.py ARGS --json`` in a compiled-mode child; its one JSON object."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_plan.py"), *args, "--json"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout)


@pytest.fixture(scope="module")
def calibration(dump_dir) -> dict:
    return run_plan("--calibrate", "--dump-dir", str(dump_dir))


def test_calibration_reproduces_the_h200_figures(calibration):
    rows = {row["kernel"]: row for row in calibration["calibration"]}
    assert set(gpu_plan.MEASURED_H200_MS) | {"iteration"} == set(rows)
    for name in gpu_plan.CALIBRATION_MUST_MATCH:
        assert rows[name]["must_match"]
        assert abs(rows[name]["predicted_ms"] / rows[name]["measured_ms"] - 1) <= 0.15, rows[name]
    report = calibration["report"]
    assert report["precision"] == "ieee" and report["launches_per_block"] == 12  # the unsplit Gram: no combine
    assert report["predicted_ms"] == report["serial_ms"]  # no programmatic dependent launch: nothing overlaps
    gemms = [row for row in report["kernels"] if row["name"] == "fused_linear_kernel"]
    assert len(gemms) == 4
    for row in gemms:  # today's IEEE GEMM: the FMA path, no MMA, W conflicts dominate
        assert row["instructions"]["FFMA"] > 0 and row["instructions"]["HMMA"] == row["instructions"]["HGMMA"] == 0
        assert row["bound"] == "shared" and row["spills"] == 0


@pytest.mark.parametrize("model", ["gpt2", "gpt2-xl"])
def test_report_fields(model, dump_dir, calibration):
    """Today's engine: at most 6 launches per block with the metric (5 per block, 5 per iteration)."""
    report = cached_plan("--model", model, "--rows", "27", "--arch", "sm_90", "--dump-dir", str(dump_dir),
                         "--dtype", "fp32")
    assert report["gemm"] == "skinny"
    assert report["precision"] == "tf32x3" and report["kernel_precisions"] == ["tf32x3"]
    assert isinstance(report["floor_ms"], float) and isinstance(report["predicted_ms"], float)
    assert 0 < report["floor_ms"] < report["predicted_ms"]
    layers = gpu_plan.PRESETS[model].n_layer
    assert report["launches_per_block"] == 5
    assert report["launches_per_iteration"] == sum(row["launches_per_iteration"] for row in report["kernels"])
    assert report["launches_per_iteration"] <= 6 * layers and report["launches_per_block_with_metric"] <= 6
    for row in report["kernels"]:
        for name, kind in KERNEL_FIELDS.items():
            assert isinstance(row[name], kind), (name, row)
        assert set(row["instructions"]) == set(gpu_plan.INSTRUCTIONS)
        assert Path(row["cubin"]).parent == dump_dir and Path(row["cubin"]).read_bytes()[:4] == b"\x7fELF"
        boundary = gpu_plan.PDL_BOUNDARY_US if row["pdl"] else gpu_plan.KERNEL_FIXED_US
        assert row["ctas_per_sm"] >= 1 and row["predicted_us"] >= boundary
    gemms = [row for row in report["kernels"] if row["name"] == "skinny_linear_kernel"]
    assert len(gemms) == 4 and all(row["instructions"]["HGMMA"] > 0 for row in gemms)  # on the tensor cores
    assert {row["name"] for row in report["kernels"] if row["pdl"]} == {"skinny_linear_kernel",
                                                                        "causal_attention_kernel"}


def test_bank_conflicts_of_an_unswizzled_w_buffer():
    """The FMA-path W operand of linear.DEFAULT_CONFIG at BLOCK_M = 32 (its sm_90 ttgir
    layouts): 32 lanes read 32 rows of 128 bytes, 32 wavefronts per LDS.128, 16 per warp."""
    parent = {"sizePerThread": [2, 2], "threadsPerWarp": [1, 32], "warpsPerCTA": [8, 1], "order": [1, 0]}
    unswizzled = {"vec": [1], "perPhase": [1], "maxPhase": [1], "order": [0, 1]}
    assert gpu_plan.operand_wavefronts((32, 64), 1, unswizzled, parent, 8) == 8 * 16 * 32
    swizzled = unswizzled | {"vec": [4], "maxPhase": [8]}  # a lane's rows 2l + j: even rows see 4 of 8 phases
    assert gpu_plan.operand_wavefronts((32, 64), 1, swizzled, parent, 8) == 8 * 16 * 8


class CountingLaunches:
    """Counts ``kernel[grid]`` by kernel name (the interpreter's launch path)."""

    def __init__(self, monkeypatch, kernel):
        self.counts: Counter = Counter()
        kind = type(kernel)
        original = kind.__getitem__

        def counted(fn, grid):
            self.counts[fn.fn.__name__ if hasattr(fn, "fn") else fn.__name__] += 1
            return original(fn, grid)

        monkeypatch.setattr(kind, "__getitem__", counted)


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts the interpreter's launches")
def test_plan_counts_the_engines_launches(monkeypatch):
    cfg = dataclasses.replace(tiny_config(), vocab_size=512)
    prompts = [[464, 208, 7, 211, 18], [318, 257, 13]]
    stream = WeightStream(cfg, tiny_state(cfg, seed=4), seed=0, random_init=False, const_reset=False,
                          device=torch.device("cpu"), dtype=torch.float32)
    engine = TritonEngine(stream, prompts, False)
    launches = CountingLaunches(monkeypatch, skinny_linear.skinny_linear_kernel)
    length = max(map(len, prompts))
    engine.iteration(0, torch.empty(len(prompts), cfg.n_layer, 2),
                     torch.empty(len(prompts), cfg.n_layer, length, length))
    gpu = dataclasses.replace(gpu_plan.ARCHS["sm_90"], sms=CPU_SM_COUNT)
    planned = gpu_plan.engine_launches(cfg, list(map(len, prompts)), "fp32", "ieee", gpu)
    want = Counter()
    for launch in planned:
        want[launch.name] += launch.per_block * cfg.n_layer + launch.per_iteration
    assert launches.counts == want
    assert sum(launch.per_block for launch in planned) == 5  # c_attn, attention, c_proj, c_fc, c_proj


# --- the skinny GEMM's plan (gpt2fast/kernels/skinny_linear.py) -------------------------

_REPORTS: dict = {}


def cached_plan(*args: str) -> dict:
    """run_plan once per argument list for the module (the compiles are shared through dump_dir)."""
    if args not in _REPORTS:
        _REPORTS[args] = run_plan(*args)
    return _REPORTS[args]


ISSUE_TARGET_MS = {"fp32": 2.2, "bf16": 1.2}  # issue 12: gpt2-xl, 27 rows, H200, fp32-accurate and bf16


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_skinny_plan_report(dtype, dump_dir, calibration):
    """gpt2-xl at 27 rows on sm_90 with --gemm skinny: one skinny launch per GEMM on the
    tensor cores (HGMMA), no finish kernel, a pipelined K loop read from the compiled code,
    and (tf32x3) GEMMs predicted faster than today's fused GEMMs and their finishes, the
    iteration no slower."""
    common = ("--model", "gpt2-xl", "--rows", "27", "--arch", "sm_90", "--dump-dir", str(dump_dir))
    report = cached_plan(*common, "--dtype", dtype)
    assert report["gemm"] == "skinny" and report["launches_per_block"] == 5
    names = [row["name"] for row in report["kernels"]]
    assert "split_k_finish_kernel" not in names and "fused_linear_kernel" not in names
    gemms = [row for row in report["kernels"] if row["name"] == "skinny_linear_kernel"]
    assert [row["role"] for row in gemms] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    for row in report["kernels"]:
        for name, kind in KERNEL_FIELDS.items():
            assert isinstance(row[name], kind), (name, row)
    for row in gemms:
        assert row["precision"] == ("tf32x3" if dtype == "fp32" else "bf16")
        assert row["instructions"]["HGMMA"] > 0 and row["spills"] == 0, row
        assert row["buffers"] >= 3 and row["loop_mma"] > 0 and row["loop_instructions"] > row["loop_mma"]
        assert row["splits"] > 1 and row["bound"].startswith(("pipeline", "memory", "l2"))
        assert set(row["step_cycles"]) == {"issue", "shared", "tensor"}
        passes = 3 if dtype == "fp32" else 1  # tf32x3's three products
        block_k = skinny_linear.BLOCK_K[torch.float32 if dtype == "fp32" else torch.bfloat16]
        assert row["loop_mma"] == passes * block_k // (8 if dtype == "fp32" else 16), row  # one HGMMA per k8 / k16
        assert row["in_flight_bytes_per_sm"] >= gpu_plan.ARCHS["sm_90"].bandwidth / gpu_plan.ARCHS["sm_90"].sms * 1e-6  # hides ~1 us
        assert 0 < sum(row["parts_us"].values()) and row["pdl"]
        # every buffer the dot reads is swizzled, and a K step's shared-memory wavefronts stay
        # within 8x of reading its operands once (a 32-way conflicted W read alone is 32x)
        buffers = gpu_plan.dot_operand_buffers(Path(row["cubin"]).with_suffix(".ttgir").read_text())
        assert len(buffers) >= 2 and all(gpu_plan.swizzled(*buffer) for buffer in buffers), buffers
        stage_bytes = (skinny_linear.BLOCK_N + 32) * block_k * (4 if dtype == "fp32" else 2)  # BLOCK_M = 32
        assert row["step_cycles"]["shared"] <= 8 * stage_bytes / 128, row
        assert row["alone_us"] > gpu_plan.PDL_BOUNDARY_US + row["parts_us"]["k_loop"]
        assert row["prefetch_bytes"] > 0
    assert 0 < report["floor_ms"] < report["predicted_ms"] <= ISSUE_TARGET_MS[dtype]
    # the timeline: prefetches under programmatic dependent launch overlap the kernels before
    # (gpu_timeline); the rows' shares add up to the iteration
    assert report["predicted_ms"] < report["serial_ms"]
    shares = sum(row["predicted_us"] * row["launches_per_iteration"] for row in report["kernels"]) / 1e3
    assert shares == pytest.approx(report["predicted_ms"], rel=1e-3)
    if dtype == "fp32":
        fused = cached_plan(*common, "--dtype", dtype, "--gemm", "fused")  # the engine measured on the H200
        assert fused["gemm"] == "fused" and report["precision"] == fused["precision"] == "tf32x3"
        assert report["predicted_ms"] < 0.6 * fused["predicted_ms"]

        def gemm_ms(rows, skip=()):  # GEMMs (+ finishes), ms per iteration, less the parts named in skip
            return sum((row["predicted_us"] - sum(row.get("parts_us", {}).get(part, 0.0) for part in skip))
                       * row["launches_per_iteration"] for row in rows
                       if row["name"] in ("skinny_linear_kernel", "fused_linear_kernel", "split_k_finish_kernel")) / 1e3

        # like for like: the skinny rows model the LayerNorm statistics' merge before the loop,
        # the fused rows leave out today's row_stats prologue (docstring of gpu_plan)
        assert gemm_ms(report["kernels"], ("ln_stats_merge",)) < 0.9 * gemm_ms(fused["kernels"])


@pytest.mark.parametrize("n, k, dtype, precision, splits", [
    (4800, 1600, "fp32", "tf32x3", 5), (1600, 6400, "bf16", "tf32x3", 20), (64, 100, "fp32", "tf32x3", 1),
    (64, 200, "bf16", "tf32x3", 3), (32, 1000, "fp32", "tf32x3", 7), (48, 1000, "fp32", "ieee", 7)])
def test_prefetched_bytes_are_the_lines_the_kernel_addresses(n, k, dtype, precision, splits):
    """gpu_plan.prefetched_bytes against the addresses skinny_linear.prefetch_weights asks for
    (per program: min(k_start + l·line, K − 1) for l < PREFETCH_LINES), counted as distinct
    128-byte lines of a row (the row's last line counted to its end)."""
    size = gpu_plan.BYTES[dtype]
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    chosen = dataclasses.replace(skinny_linear.plan(27, n, k, CPU_SM_COUNT, torch_dtype, precision), splits=splits)
    line = 128 // size
    k_blocks = -(-k // chosen.block_k)
    addressed = set()
    for s in range(splits):
        k_start = (s * k_blocks // splits) * chosen.block_k
        addressed |= {min(k_start + index * line, k - 1) // line for index in range(skinny_linear.PREFETCH_LINES)}
    elements = sum(min(line, k - first * line) for first in addressed)
    assert gpu_plan.prefetched_bytes(n, k, size, chosen) == n * elements * size


def test_committed_predictions_are_current(dump_dir, calibration):
    """bench/predicted_h200.json, which gpu_profile prints beside its measurements, is what the
    model predicts today for each of gpu_profile's Triton variants."""
    import gpu_profile

    committed = json.loads(gpu_plan.PREDICTIONS.read_text())
    current = run_plan("--predictions", "--dump-dir", str(dump_dir))
    assert set(current["variants"]) == {name for name, variant in gpu_profile.VARIANTS.items() if variant[0] == "triton"}
    assert committed == current, "rerun: python bench/gpu_plan.py --predictions > bench/predicted_h200.json"
    bf16 = committed["variants"]["triton bf16"]["predicted_ms"]
    assert gpu_profile.predicted("triton bf16", "gpt2-xl", 27).startswith(f"; the model predicts {bf16:.3f} ms")
    assert gpu_profile.predicted("triton bf16", "gpt2", 27) == ""


def test_shared_replay_of_swizzled_tensor_core_operands():
    """The tensor core reads a wgmma operand in 8-row × 16-byte core matrices: conflict-free
    from nvmma's 128-byte swizzle (bytes / 128 wavefronts), 8-way from unswizzled 128-byte rows."""
    shape, element = (64, 32), 4  # fp32 [64, 32]: 128-byte rows
    swizzled, fast = gpu_plan._address(shape, "nvmma_shared", {"swizzlingByteWidth": [128], "transposed": [0]},
                                       element)
    reads = list(gpu_plan._core_matrix_accesses(shape, fast, element))
    assert gpu_plan._replay(reads, swizzled) == 64 * 32 * 4 // 128
    plain, _ = gpu_plan._address(shape, "swizzled_shared",
                                 {"vec": [1], "perPhase": [1], "maxPhase": [1], "order": [1, 0]}, element)
    assert gpu_plan._replay(reads, plain) == 8 * 64 * 32 * 4 // 128
    # wgmma's A operand into registers from a vec = 4, maxPhase = 8 swizzle (tf32x3's W): conflict-free
    w, _ = gpu_plan._address(shape, "swizzled_shared", {"vec": [4], "perPhase": [1], "maxPhase": [8],
                                                        "order": [1, 0]}, element)
    assert gpu_plan._replay(gpu_plan._wgmma_a_accesses(shape, 4, element), w) == 64 * 32 * 4 // 128


# The skinny plan's GEMMs whose wave efficiency (all CTAs' K steps over 132 × the busiest SM's)
# is under 0.85 at every M in {1, 16, 27, 64} (one BLOCK_M tile each), with why. Expected, not
# hidden: the plan slices K into slices of at least MIN_SLICE_BLOCKS (4) BLOCK_K steps (finer
# slices balance better but cost each program a pipeline fill and the split-K tail: with 2,
# the model predicts gpt2-xl fp32 2.72 ms instead of 2.18), so a matrix of few tiles and a
# short K cannot be shared evenly over 132 SMs.
EXPECTED_UNDERFILLED = {
    # gpt2, K = 768: 24 (fp32) or 12 (bf16) K steps allow at most 6 or 3 slices
    ("gpt2", "attn.c_attn", "fp32"): "36 tiles x 6 slices = 216 CTAs: 2 of 4 steps on some SMs, mean 6.5 steps",
    ("gpt2", "attn.c_attn", "bf16"): "36 tiles x 3 slices = 108 < 132 CTAs: K too short",
    ("gpt2", "attn.c_proj", "fp32"): "12 tiles x 6 slices = 72 < 132: too few tiles",
    ("gpt2", "attn.c_proj", "bf16"): "12 tiles x 3 slices = 36 < 132: too few tiles",
    ("gpt2", "mlp.c_fc", "fp32"): "48 tiles x 6 slices = 288: 3 CTAs of 4 steps on the busiest SM, mean 8.7",
    ("gpt2", "mlp.c_fc", "bf16"): "48 tiles x 3 slices = 144: 2 CTAs on 12 SMs, K too short",
    ("gpt2", "mlp.c_proj", "bf16"): "12 tiles x 12 slices = 144: 2 CTAs on 12 SMs, K too short in 64-wide steps",
    # gpt2-xl attn c_proj, K = 1600: 25 tiles x 50 (fp32) or 25 (bf16) steps; no S of slices
    # of 4+ steps gives the 132 SMs near-equal shares (S = 11: 3 CTAs x 5 steps, mean 9.5)
    ("gpt2-xl", "attn.c_proj", "fp32"): "25 tiles x 11 slices = 275: 3 x 5 steps on the busiest SM, mean 9.5",
    ("gpt2-xl", "attn.c_proj", "bf16"): "25 tiles x 6 slices = 150: 2 x 5 steps on the busiest SM, mean 4.7",
}


def test_skinny_wave_efficiency_on_132_sms():
    """Every gpt2 and gpt2-xl GEMM at M in {1, 16, 27, 64}: wave efficiency (all CTAs' K steps
    / (132 × the busiest SM's)) is ≥ 0.85 except for the shapes listed, each with its reason."""
    report = gpu_plan.wave_report()
    assert len(report) == 2 * 4 * 4 * 2
    under = {(row["model"], row["role"], row["dtype"]) for row in report if row["efficiency"] < 0.85}
    for row in report:
        print(f"\n{row['model']} {row['role']} M={row['rows']} {row['dtype']}: S={row['splits']} "
              f"{row['ctas']} CTAs of {row['steps']} steps, efficiency {row['efficiency']}", end="")
    assert under == set(EXPECTED_UNDERFILLED)
    for key in under:  # the same at every M: one BLOCK_M tile up to 64 rows
        assert len({row["efficiency"] for row in report if (row["model"], row["role"], row["dtype"]) == key}) == 1


def test_dot_operand_buffers_tell_swizzled_from_plain():
    """The encodings of the buffers a dot reads, from ttgir text as Triton writes it."""
    ttgir = """#shared = #ttg.nvmma_shared<{swizzlingByteWidth = 128, transposed = false, elementBitWidth = 16}>
#shared1 = #ttg.swizzled_shared<{vec = 1, perPhase = 1, maxPhase = 1, order = [1, 0]}>
#shared2 = #ttg.swizzled_shared<{vec = 4, perPhase = 1, maxPhase = 8, order = [0, 1]}>
      %a = ttng.warp_group_dot %w, %x, %acc {inputPrecision = 0 : i32} : !ttg.memdesc<64x64xbf16, #shared, #smem, mutable> * !ttg.memdesc<64x32xbf16, #shared2, #smem, mutable> -> tensor<64x32xf32, #mma>
      %b = ttg.local_load %y token %t : !ttg.memdesc<32x32xf32, #shared1, #smem, mutable> -> tensor<32x32xf32, #ttg.dot_op<{opIdx = 1, parent = #mma, kWidth = 1}>>
      %c = ttg.local_load %z token %t : !ttg.memdesc<32x32xf32, #shared1, #smem, mutable> -> tensor<32x32xf32, #blocked>
      %d = ttng.warp_group_dot %c, %x, %acc {inputPrecision = 0 : i32} : tensor<64x32xf32, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 1}>> * !ttg.memdesc<32x64xf32, #shared1, #smem> -> tensor<64x64xf32, #mma>
"""
    buffers = gpu_plan.dot_operand_buffers(ttgir)  # %c's plain load feeds no dot: not listed
    assert [kind for kind, _ in buffers] == ["nvmma_shared", "swizzled_shared", "swizzled_shared", "swizzled_shared"]
    assert [gpu_plan.swizzled(*buffer) for buffer in buffers] == [True, True, False, False]
