"""The panel kernel's variants against oneDNN on the 48 GEMMs of a gpt2 iteration
(``panel_linear.py``): in this process with oneDNN at its best ISA, as ratio-table cases,
and in a child process with oneDNN limited to AVX2 (``ONEDNN_MAX_CPU_ISA`` is read once, at
oneDNN's start), where the AVX2 variant is compared with oneDNN on the same instruction set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2fast import _panel_linear
from gpt2fast.kernels import panel_linear

sys.path.insert(0, str(Path(__file__).resolve().parent))

from panel_linear import gpt2_gemms, packed_for, unit_seconds  # noqa: E402

VARIANTS = _panel_linear.variants()
pytestmark = pytest.mark.skipif(not VARIANTS, reason="no panel-kernel variant runs on this CPU")
ROWS = (1, 27, 96)


@pytest.fixture(scope="module")
def gemms():
    return gpt2_gemms()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", ["onednn", "panels"])
@pytest.mark.parametrize("rows", ROWS)
def test_gemms_of_a_gpt2_iteration(benchmark, monkeypatch, gemms, variant, path, rows):
    monkeypatch.setenv(panel_linear.VARIANT_ENV, variant)
    packed, ops = packed_for("onednn" if path == "onednn" else variant, gemms)
    benchmark.group = f"panel_linear: 48 gpt2 GEMMs, M = {rows}, {variant} vs oneDNN"
    benchmark.extra_info.update(role="baseline" if path == "onednn" else "gpt2fast", panel_kernel=variant)
    benchmark.pedantic(unit_seconds, args=(packed, ops, rows), rounds=7, warmup_rounds=1)


def test_avx2_against_onednn_limited_to_avx2(benchmark):
    """One child run; the speed-up of each variant at M = 27 goes to extra_info and the summary."""
    if "avx2" not in VARIANTS:
        pytest.skip("this CPU does not run the AVX2 variant")
    script = Path(__file__).with_name("panel_linear.py")

    def child() -> dict:
        done = subprocess.run([sys.executable, str(script), "--onednn-isa", "AVX2", "--rows", "27", "--json"],
                              check=True, capture_output=True, text=True, env={**os.environ})
        return json.loads(done.stdout)

    ms = benchmark.pedantic(child, rounds=1)
    speed_ups = {variant: ms["onednn"]["27"] / ms[variant]["27"] for variant in VARIANTS}
    summary = (f"panel_linear: 48 gpt2 GEMMs, M = 27, oneDNN limited to AVX2 {ms['onednn']['27']:.1f} ms; "
               + ", ".join(f"{v} {ms[v]['27']:.1f} ms ({speed_ups[v]:.2f}x)" for v in VARIANTS))
    benchmark.extra_info.update(ms_per_unit=ms, speed_up_over_onednn_avx2=speed_ups, summary=summary)
