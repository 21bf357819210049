"""The panel kernel's build stays portable: CMakeLists.txt configured as on a machine without
OpenMP, and as with a compiler that does not take -mavx512f, still builds
``gpt2fast._panel_linear`` (with fewer variants), and the package runs on what it has.

Each configuration builds the one module in its own directory (about 20 s); the module is
then loaded in a child process (importing it here would shadow the installed one).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pybind11
import pytest

ROOT = Path(__file__).resolve().parents[1]

# In the child: load the freshly built module as gpt2fast._panel_linear before the package
# imports the installed one, report what it has, and run one small product through kernels.panel_linear with each variant it runs.
PROBE = """
import importlib.util, json, os, sys
import torch
spec = importlib.util.spec_from_file_location("gpt2fast._panel_linear", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["gpt2fast._panel_linear"] = module  # found there by the package's imports
from gpt2fast.backends import cpu_packed
from gpt2fast.kernels import panel_linear
x, w, b = torch.randn(5, 24), torch.randn(40, 24), torch.randn(40)
errors = {}
for name in module.variants():
    os.environ[panel_linear.VARIANT_ENV] = name
    got = panel_linear.panel_linear(x, panel_linear.pack_panels(w), b)
    errors[name] = float((got.double() - (x.double() @ w.double().T + b.double())).abs().max())
os.environ.pop(panel_linear.VARIANT_ENV, None)
print(json.dumps({"compiled": module.compiled(), "variants": module.variants(), "errors": errors,
                  "chosen": panel_linear.kernel_variant(),
                  "few_rows_layout": type(cpu_packed.layout_for(27).ops).__name__}))
"""


def cmake() -> str:
    """The cmake of the test extras (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).with_name("cmake")
    return str(beside) if beside.exists() else shutil.which("cmake")


def build_panel_module(directory: Path, *options: str) -> Path:
    """Configure CMakeLists.txt with ``options`` in ``directory``, build _panel_linear, and
    return the module's path."""
    output = directory / "lib"
    subprocess.run([cmake(), "-S", str(ROOT), "-B", str(directory / "build"), "-DCMAKE_BUILD_TYPE=Release",
                    f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output}", f"-DPython_EXECUTABLE={sys.executable}",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", *options],
                   check=True, capture_output=True)
    subprocess.run([cmake(), "--build", str(directory / "build"), "--target", "_panel_linear", "--parallel", "2"],
                   check=True, capture_output=True)
    return output / f"_panel_linear{sysconfig.get_config_var('EXT_SUFFIX')}"


def probe(module: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(module)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def test_without_openmp_the_module_builds_with_no_variant_and_oneDNN_serves_few_rows(tmp_path):
    report = probe(build_panel_module(tmp_path, "-DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON"))
    assert report["compiled"] == [] and report["variants"] == [] and report["chosen"] is None
    assert report["few_rows_layout"] == "PackedLinears"


def test_a_compiler_without_avx512_flags_builds_the_avx2_variant_alone(tmp_path):
    """The compiler check's answer is given as CMake would cache it for such a compiler."""
    report = probe(build_panel_module(tmp_path, "-DGPT2FAST_COMPILER_TAKES_avx512=OFF"))
    assert report["compiled"] == ["avx2"]
    if report["variants"]:  # this CPU runs AVX2
        assert report["chosen"] == "avx2" and report["few_rows_layout"] == "PanelLinears"
        assert report["errors"]["avx2"] < 1e-4


def test_an_unknown_variant_name_stops_the_configuration(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as failure:
        build_panel_module(tmp_path, "-DGPT2FAST_PANEL_VARIANTS=avx2;sse9")
    assert b"unknown variant 'sse9'" in failure.value.stderr
