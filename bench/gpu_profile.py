"""Where one consensus iteration's GPU time goes (run on a GPU; prints a short table).

For gpt2-xl on the default 27-token prompt (random weights), per backend: the replay time
of the captured iteration graph (CUDA events, median of 20), the time of the C++ driver's
whole loop per iteration, and the kernels of one eager iteration by total device time
(``torch.profiler``), against the weight-bandwidth floor measured in the same run.

Usage: python bench/gpu_profile.py [model]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt2fast.backends import make_engine  # noqa: E402
from gpt2fast.config import DEFAULT_PROMPT, PRESETS  # noqa: E402
from gpt2fast.driver import drive  # noqa: E402
from gpt2fast.tokenizer import gpt2_encoding  # noqa: E402
from gpt2fast.weight_stream import WeightStream  # noqa: E402
from gpt2fast.weights import random_state  # noqa: E402
from hardware import memory_bandwidth  # noqa: E402
from roofline import iteration_work  # noqa: E402

DRIVEN_ITERATIONS = 50


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


def kernel_table(engine, rows: int = 12) -> list[str]:
    """The kernels of one eager iteration, most device time first."""
    err = torch.empty(engine.n_prompts, engine.n_layer, 2, device="cuda")
    gram = torch.empty(engine.n_prompts, engine.n_layer, engine.length, engine.length, device="cuda")
    engine.iteration(0, err, gram)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.iteration(0, err, gram)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)
    return table.splitlines()


def main(model: str) -> None:
    cfg = PRESETS[model]
    tokens = [gpt2_encoding().encode(DEFAULT_PROMPT)]
    stream = WeightStream(cfg, random_state(cfg, 0), seed=0, random_init=False, const_reset=False,
                          device=torch.device("cuda"), dtype=torch.float32)
    bandwidth = memory_bandwidth(torch.device("cuda"))
    weight_bytes, _ = iteration_work(cfg, [len(tokens[0])], True)
    floor_ms = weight_bytes / bandwidth * 1e3
    print(f"{torch.cuda.get_device_name()}: copy {bandwidth / 1e9:.0f} GB/s; {model} T={len(tokens[0])}: "
          f"{weight_bytes / 1e9:.2f} GB per iteration, floor {floor_ms:.3f} ms", flush=True)
    for backend in ("triton", "torch"):
        engine = make_engine(backend, stream, tokens, False, "fp32")
        captured = engine.capture_iteration(True, DRIVEN_ITERATIONS)
        graph_ms = replay_ms(captured.graph)
        with tempfile.TemporaryDirectory() as folder:
            drive(make_engine(backend, stream, tokens, False, "fp32"), 2, Path(folder) / "e.npy",
                  Path(folder) / "g.npy")
            started = time.perf_counter()
            drive(make_engine(backend, stream, tokens, False, "fp32"), DRIVEN_ITERATIONS,
                  Path(folder) / "e.npy", Path(folder) / "g.npy")
            driven_ms = (time.perf_counter() - started) / DRIVEN_ITERATIONS * 1e3
        print(f"{backend}: graph replay {graph_ms:.3f} ms/iteration ({graph_ms / floor_ms:.1f}x floor), "
              f"driver loop {driven_ms:.3f} ms/iteration (N={DRIVEN_ITERATIONS}, incl. engine set-up)",
              flush=True)
        print("\n".join(kernel_table(engine)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpt2-xl")
