"""gpt2fast: GPT-2's block stack applied to prompts again and again, and how their token
vectors come to agree (consensus) after every block."""

__version__ = "0.1.0"

from .api import ConsensusResult, GenerationResult, consensus, generate, load_result  # noqa: E402

__all__ = ["ConsensusResult", "GenerationResult", "consensus", "generate", "load_result"]
