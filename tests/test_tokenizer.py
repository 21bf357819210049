"""The offline GPT-2 tokenizer: known token ids, round trips, hash checks, no cache writes."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile

import pytest
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from gpt2fast.config import DEFAULT_PROMPT, VOCAB_SIZE
from gpt2fast.errors import InputError
from gpt2fast.tokenizer import (
    SHA256,
    build_encoding,
    data_gym_bytes,
    gpt2_encoding,
    mergeable_ranks,
    vocabulary_files,
)

TRICKY = [
    DEFAULT_PROMPT,
    "Hello world",
    "I'll say it's what we've done, they're sure I'd",
    "  leading and trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "numbers 1234567 and 3.14159, symbols !?#@$%^&*()",
    "héllo wörld — naïve café",
    "日本語のテキスト and 中文",
    "emoji 🎉🚀 and family 👨\u200d👩\u200d👧",
    "",
]


@pytest.fixture(scope="module")
def enc() -> tiktoken.Encoding:
    return gpt2_encoding()


def test_default_prompt_is_27_tokens(enc):
    assert len(enc.encode(DEFAULT_PROMPT)) == 27


@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello world", [15496, 995]),
        ("Hello", [15496]),
        (" the", [262]),
        ("!", [0]),
        (" ", [220]),
        ("\n\n", [628]),
        ("I'll", [40, 1183]),
    ],
)
def test_known_gpt2_ids(enc, text, ids):
    assert enc.encode(text) == ids


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(enc, text):
    assert enc.decode(enc.encode(text)) == text


def test_vocabulary_size(enc):
    assert enc.n_vocab == VOCAB_SIZE == 50257
    assert enc.max_token_value == 50256


def test_endoftext_is_special(enc):
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.decode([50256]) == "<|endoftext|>"
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode("<|endoftext|>")


def test_every_ordinary_id_decodes_alone(enc):
    pieces = [enc.decode([i]) for i in range(50256)]
    assert all(isinstance(p, str) and p for p in pieces)


def test_data_gym_alphabet():
    order, char_to_byte = data_gym_bytes()
    assert sorted(order) == list(range(256))
    assert sorted(char_to_byte.values()) == list(range(256))
    assert order[:3] == [ord("!"), ord('"'), ord("#")]
    assert char_to_byte["Ġ"] == ord(" ")
    assert char_to_byte["Ċ"] == ord("\n")


def test_matches_tiktoken_reference_loader(monkeypatch, enc):
    """tiktoken's own parser (cache disabled) on the same files gives the same ranks, and
    tiktoken's r50k pattern splits the same way."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    vocab_bpe, encoder_json = vocabulary_files()
    ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    assert ranks == mergeable_ranks(vocab_bpe.read_text("utf-8"), encoder_json.read_text("utf-8"))
    reference = tiktoken.Encoding(
        name="gpt2-reference",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )
    for text in TRICKY:
        assert enc.encode(text) == reference.encode(text)


def test_building_writes_no_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    encoding = build_encoding(*vocabulary_files())
    assert encoding.encode("Hello world") == [15496, 995]
    assert list(temp.iterdir()) == []


def test_tampered_vocab_is_refused(tmp_path):
    vocab_bpe, encoder_json = vocabulary_files()
    tampered = tmp_path / "vocab.bpe"
    data = bytearray(vocab_bpe.read_bytes())
    data[100] ^= 0x01
    tampered.write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256") as info:
        build_encoding(tampered, encoder_json)
    assert str(tampered) in str(info.value)
    assert "\n" not in str(info.value)


def test_tampered_encoder_is_refused(tmp_path):
    vocab_bpe, encoder_json = vocabulary_files()
    tampered = tmp_path / "encoder.json"
    tampered.write_bytes(encoder_json.read_bytes() + b" ")
    with pytest.raises(InputError, match="SHA-256") as info:
        build_encoding(vocab_bpe, tampered)
    assert str(tampered) in str(info.value)


def test_swapped_files_are_refused(tmp_path):
    vocab_bpe, encoder_json = vocabulary_files()
    swapped = tmp_path / "vocab.bpe"
    shutil.copy(encoder_json, swapped)
    with pytest.raises(InputError, match=re.escape(str(swapped))):
        build_encoding(swapped, encoder_json)


def test_missing_file_is_refused(tmp_path):
    _, encoder_json = vocabulary_files()
    missing = tmp_path / "vocab.bpe"
    with pytest.raises(InputError, match="cannot read") as info:
        build_encoding(missing, encoder_json)
    assert str(missing) in str(info.value)


def test_missing_package_is_refused():
    with pytest.raises(InputError, match="gpt2fast_no_such_package is not installed"):
        vocabulary_files("gpt2fast_no_such_package")


def test_package_files_carry_pinned_hashes():
    pinned = {
        "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    }
    assert SHA256 == pinned
    for path in vocabulary_files():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == pinned[path.name]


def test_inconsistent_vocabulary_is_refused():
    """A merge list and an id table that disagree (here: a 257th token the table lacks)."""
    order, char_to_byte = data_gym_bytes()
    byte_to_char = {b: c for c, b in char_to_byte.items()}
    table = {byte_to_char[b]: rank for rank, b in enumerate(order)}
    encoder_text = json.dumps(table)
    assert len(mergeable_ranks("#version: 0.2\n", encoder_text)) == 256
    with pytest.raises(InputError, match="do not describe the same vocabulary"):
        mergeable_ranks("#version: 0.2\nĠ t\n", encoder_text)
