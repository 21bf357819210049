"""Where prompts come from: random token ids, the terminal (or piped stdin), a file."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TextIO

import tiktoken

from .errors import InputError
from .tokenizer import ENDOFTEXT_ID

SINGLE_QUESTION = "Enter a prompt to generate text: "


def random_prompt(encoding: tiktoken.Encoding, n_tokens: int, rng: random.Random) -> str:
    """``n_tokens`` ids drawn uniformly from the ordinary tokens (``<|endoftext|>`` excluded),
    each decoded on its own, joined with single spaces.

    The text is the prompt; re-encoding it usually gives a different number of tokens.
    """
    ids = (rng.randint(0, ENDOFTEXT_ID - 1) for _ in range(n_tokens))
    return " ".join(encoding.decode([i]) for i in ids)


def question(n: int, single: bool) -> str:
    """What the terminal asks before reading prompt number ``n`` (counted from 1)."""
    if single:
        return SINGLE_QUESTION
    return f"Enter prompt {n} (or press Enter to finish): "


def read_prompts(stream: TextIO, ask: TextIO | None, single: bool) -> list[str]:
    """Prompts typed one per line on ``stream``, each stripped; an empty line ends the list.

    ``single`` reads at most one (generation mode); otherwise prompts are read until an empty
    line (consensus mode). The end of input ends the list like an empty line. Each question is
    written to ``ask`` and flushed before its line is read; ``ask`` is None when nobody is
    there to see it (piped stdin). Lines are read one at a time, so nothing after the ending
    line is consumed. An empty result means "use the default prompt".
    """
    prompts: list[str] = []
    while True:
        if ask is not None:
            ask.write(question(len(prompts) + 1, single))
            ask.flush()
        answer = stream.readline().strip()
        if not answer:
            return prompts
        prompts.append(answer)
        if single:
            return prompts


MAX_PROMPTS_FILE_BYTES = 256 << 20  # read whole into memory, then tokenised: a bound on both
MAX_PROMPTS = 1 << 20  # prompts in one run, from any source (each is a Python string and token list)


def read_prompts_file(path: Path) -> list[str]:
    """The prompts in a UTF-8 text file, one per line, each stripped; blank lines skipped.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r``; a leading byte-order mark is ignored. Raises
    ``InputError`` when the file cannot be read, is not UTF-8, or holds no prompt.
    """
    try:
        # opened without waiting for a FIFO's writer (none: it reads as empty), then read to the
        # bound: a pipe or a device has no size to check first
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(fd, True)
        with open(fd, "rb") as file:
            data = file.read(MAX_PROMPTS_FILE_BYTES + 1)
        if len(data) > MAX_PROMPTS_FILE_BYTES:
            raise InputError(f"prompts file {path} is larger than {MAX_PROMPTS_FILE_BYTES >> 20} MiB")
        ends = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
        if ends + (not data.endswith((b"\n", b"\r"))) > MAX_PROMPTS:
            raise InputError(f"prompts file {path} has more than {MAX_PROMPTS} lines")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"prompts file {path} is not UTF-8 (byte {e.start})") from e
    except OSError as e:
        raise InputError(f"cannot read prompts file {path}: {e.strerror}") from e
    prompts = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise InputError(f"prompts file {path} holds no prompt")
    return prompts
