"""The least work one consensus iteration or one generated token must do (benchmarks' floors,
``plan``'s estimate).

Bytes: every block's parameters are read once per pass over the stack (float32), plus the
err2 slices written when recorded; activations are small next to the weights at these
row counts and are left out. FLOPs: 2 per multiply-add of the Linear layers over the real
(unpadded) rows, the causal attention products and the Gram matrix of the metric.
"""

from __future__ import annotations

from gpt2fast.config import ModelConfig
from gpt2fast.weights import linear_shapes

FLOAT32 = 4


def block_parameters(cfg: ModelConfig) -> int:
    """Parameters of one block: the four Linear layers with biases and two LayerNorms."""
    linear = sum(out_f * in_f + out_f for out_f, in_f in linear_shapes(cfg).values())
    return linear + 4 * cfg.n_embd


def iteration_work(cfg: ModelConfig, lengths: list[int], with_gram: bool,
                   element_size: int = FLOAT32) -> tuple[int, int]:
    """(bytes, FLOPs) of one iteration over all L blocks for prompts of ``lengths`` tokens,
    weights stored with ``element_size`` bytes each."""
    width, layers = cfg.n_embd, cfg.n_layer
    linear_macs = sum(out_f * in_f for out_f, in_f in linear_shapes(cfg).values())
    rows = sum(lengths)
    squares = sum(length * length for length in lengths)
    flops = layers * (2 * rows * linear_macs + 2 * squares * width + 2 * squares * width)
    bytes_moved = layers * block_parameters(cfg) * element_size
    if with_gram:
        bytes_moved += layers * squares * FLOAT32
    return bytes_moved, flops


def token_work(cfg: ModelConfig, iterations: int, context: int) -> tuple[int, int]:
    """(bytes, FLOPs) of one cached generation step: N passes over the blocks for one new
    row attending to ``context`` cached rows, then the tied LM head."""
    linear_macs = sum(out_f * in_f for out_f, in_f in linear_shapes(cfg).values())
    head = cfg.vocab_size * cfg.n_embd
    steps = iterations * cfg.n_layer
    bytes_moved = steps * block_parameters(cfg) * FLOAT32 + head * FLOAT32
    flops = steps * (2 * linear_macs + 4 * context * cfg.n_embd) + 2 * head
    return bytes_moved, flops
