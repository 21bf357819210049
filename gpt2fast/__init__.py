"""gpt2fast: GPT-2's block stack applied to prompts again and again, and how their token
vectors come to agree (consensus) after every block.

The API (``gpt2fast.api``) is imported on first use, so ``python -m gpt2fast`` can answer a
Ctrl-C that comes while torch is still importing with one line.
"""

__version__ = "0.1.0"

__all__ = ["ConsensusResult", "GenerationResult", "consensus", "generate", "load_result"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'gpt2fast' has no attribute {name!r}")
