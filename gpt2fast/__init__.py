"""gpt2fast: GPT-2's block stack applied to prompts again and again, and how their token
vectors come to agree (consensus) after every block.

The API loads on first use (PEP 562), so ``import gpt2fast`` and ``python -m gpt2fast``
start without importing torch: a Ctrl-C while torch loads is then the CLI's to report."""

__version__ = "0.1.0"

__all__ = ["ConsensusResult", "GenerationResult", "consensus", "generate", "load_result"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
