"""Model presets and the immutable configuration of one run."""

from __future__ import annotations

from dataclasses import dataclass, field

VOCAB_SIZE = 50257
CONTEXT = 1024
HEAD_DIM = 64  # every GPT-2 size: n_embd = 64 · n_head


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a GPT-2-shaped model.

    n_layer: number of blocks L; n_head: attention heads H; n_embd: width C (H * head_dim);
    vocab_size: rows of ``wte``; n_positions: rows of ``wpe`` (the context length).
    """

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int = VOCAB_SIZE
    n_positions: int = CONTEXT

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


PRESETS: dict[str, ModelConfig] = {
    "gpt2": ModelConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": ModelConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": ModelConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": ModelConfig(n_layer=48, n_head=25, n_embd=1600),
}

DEFAULT_MODEL = "gpt2"
DEFAULT_ITERATIONS = 2000
DEFAULT_GENERATION_LENGTH = 50
DEFAULT_PROMPT = (
    "Describe a futuristic city where humans and robots live together. "
    "Talk about what the city looks like and what daily life is like there."
)


@dataclass(frozen=True)
class ConsensusFlags:
    """The switches of the original script that change the maths of a run.

    iterations: N, passes over the whole block stack; noff: skip the MLP half of every block;
    random_init: redraw Linear weights and embeddings once, after the embedding;
    const_reset: redraw them after every block application; seed: for every random draw.
    """

    iterations: int = DEFAULT_ITERATIONS
    noff: bool = False
    random_init: bool = False
    const_reset: bool = False
    seed: int = 0
    decode_iterations: tuple[int, ...] = field(default=())
