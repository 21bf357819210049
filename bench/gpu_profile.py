"""Where one consensus iteration's GPU time goes, per engine variant (run on a GPU).

For gpt2-xl on the default 27-token prompt (random weights), per variant (``VARIANTS``: the
torch backend, the Triton engine at each product precision and dtype, with and without
programmatic dependent launch, and with the fused GEMMs it ran before the skinny ones): the
replay time of the captured iteration graph (CUDA events, median of 20) against the weight
floor of its dtype (copy bandwidth measured in the same run), the first iteration's err
against the torch fp32 engine's, and the kernels of one eager iteration by device time
(``torch.profiler``; ``--kernels``). ``--driver`` adds the C++ driver's whole loop per
iteration for the default variants. Each Triton variant's line ends with what the model
predicted for it (``bench/predicted_h200.json``, written by ``gpu_plan.py --predictions``).

Usage: python bench/gpu_profile.py [model] [--variants NAME ...] [--kernels] [--driver]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt2fast.backends import triton_backend  # noqa: E402
from gpt2fast.backends.torch_backend import TorchEngine  # noqa: E402
from gpt2fast.backends.triton_backend import TritonEngine  # noqa: E402
from gpt2fast.config import DEFAULT_PROMPT, PRESETS  # noqa: E402
from gpt2fast.driver import drive  # noqa: E402
from gpt2fast.kernels import dependent_launch  # noqa: E402
from gpt2fast.tokenizer import gpt2_encoding  # noqa: E402
from gpt2fast.weight_stream import WeightStream  # noqa: E402
from gpt2fast.weights import random_state  # noqa: E402
from hardware import memory_bandwidth  # noqa: E402
from gpt2fast.work import iteration_work  # noqa: E402

DRIVEN_ITERATIONS = 50
# name: (backend, dtype, product precision, programmatic dependent launch, skinny GEMMs)
VARIANTS = {
    "torch fp32": ("torch", torch.float32, None, False, False),
    "triton fp32 ieee": ("triton", torch.float32, "ieee", True, True),
    "triton fp32 tf32x3": ("triton", torch.float32, "tf32x3", True, True),
    "triton fp32 tf32x3 no-pdl": ("triton", torch.float32, "tf32x3", False, True),
    "triton fp32 ieee fused": ("triton", torch.float32, "ieee", True, False),
    "triton bf16": ("triton", torch.bfloat16, "ieee", True, True),
    "torch bf16": ("torch", torch.bfloat16, None, False, False),
}
DEFAULT_VARIANTS = ("torch fp32", "triton fp32 ieee", "triton fp32 tf32x3", "triton fp32 tf32x3 no-pdl",
                    "triton bf16")


def predicted(name: str, model: str, length: int) -> str:
    """What bench/predicted_h200.json (``gpu_plan.py --predictions``) says of variant ``name``
    for this model and prompt length ('' when it has nothing)."""
    path = Path(__file__).resolve().parent / "predicted_h200.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    variant = figures.get("variants", {}).get(name)
    if variant is None or (figures["model"], figures["rows"]) != (model, length):
        return ""
    return (f"; the model predicts {variant['predicted_ms']:.3f} ms ({variant['serial_ms']:.3f} without overlap) "
            f"on an {figures['gpu']}")


def replay_ms(graph: torch.cuda.CUDAGraph, repeats: int = 20) -> float:
    """Median device time of one replay, in milliseconds."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def first_err(engine) -> torch.Tensor:
    """err [P, L, 2] of the engine's first iteration (eager), on the CPU."""
    err = torch.empty(engine.n_prompts, engine.n_layer, 2, device="cuda")
    gram = torch.empty(engine.n_prompts, engine.n_layer, engine.length, engine.length, device="cuda")
    engine.iteration(0, err, gram)
    return err.cpu()


def kernel_table(engine, rows: int = 14) -> list[str]:
    """The kernels of one eager iteration, most device time first."""
    first_err(engine)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        first_err(engine)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)
    return table.splitlines()


def build(name: str, streams: dict, tokens: list[list[int]]):
    """The engine of variant ``name``, with the module switches it needs set."""
    backend, dtype, precision, pdl, skinny = VARIANTS[name]
    dependent_launch.ENABLED, triton_backend.SKINNY_GEMMS = pdl, skinny
    stream = streams[dtype]
    if backend == "torch":
        return TorchEngine(stream, tokens, False)
    return TritonEngine(stream, tokens, False, precision)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="gpt2-xl", choices=sorted(PRESETS))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--kernels", action="store_true", help="the kernel table of each variant")
    parser.add_argument("--driver", action="store_true", help="the C++ driver's loop per iteration too")
    args = parser.parse_args(argv)
    cfg = PRESETS[args.model]
    tokens = [gpt2_encoding().encode(DEFAULT_PROMPT)]
    state = random_state(cfg, 0)
    dtypes = {VARIANTS[name][1] for name in args.variants} | {torch.float32}
    streams = {dtype: WeightStream(cfg, state, seed=0, random_init=False, const_reset=False,
                                   device=torch.device("cuda"), dtype=dtype) for dtype in dtypes}
    bandwidth = memory_bandwidth(torch.device("cuda"))
    weight_bytes, _ = iteration_work(cfg, [len(tokens[0])], True)  # fp32 bytes
    print(f"{torch.cuda.get_device_name()}: copy {bandwidth / 1e9:.0f} GB/s; {args.model} T={len(tokens[0])}: "
          f"{weight_bytes / 1e9:.2f} GB per fp32 iteration, floor {weight_bytes / bandwidth * 1e3:.3f} ms", flush=True)
    reference = first_err(build("torch fp32", streams, tokens))
    for name in args.variants:
        engine = build(name, streams, tokens)
        floor_ms = weight_bytes * streams[VARIANTS[name][1]].wte.element_size() / 4 / bandwidth * 1e3
        difference = float(((first_err(engine) - reference).abs() / reference.abs().clamp_min(1e-6)).max())
        graph_ms = replay_ms(engine.capture_iteration(True, DRIVEN_ITERATIONS).graph)
        print(f"{name}: graph replay {graph_ms:.3f} ms/iteration ({graph_ms / floor_ms:.2f}x its floor "
              f"{floor_ms:.3f} ms); first iteration's err vs torch fp32: max relative {difference:.2e}"
              + predicted(name, args.model, len(tokens[0])), flush=True)
        if args.driver:
            with tempfile.TemporaryDirectory() as folder:
                drive(build(name, streams, tokens), 2, Path(folder) / "e.npy", Path(folder) / "g.npy")
                started = time.perf_counter()
                drive(build(name, streams, tokens), DRIVEN_ITERATIONS, Path(folder) / "e.npy", Path(folder) / "g.npy")
                print(f"  driver loop {(time.perf_counter() - started) / DRIVEN_ITERATIONS * 1e3:.3f} ms/iteration "
                      f"(N={DRIVEN_ITERATIONS}, incl. engine set-up)", flush=True)
        if args.kernels:
            print("\n".join(kernel_table(engine)), flush=True)


if __name__ == "__main__":
    main()
