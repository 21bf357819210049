"""Prompt sources: random token ids, the terminal loop, prompts files."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from gpt2fast.errors import InputError
from gpt2fast.prompts import SINGLE_QUESTION, random_prompt, read_prompts, read_prompts_file
from gpt2fast.tokenizer import gpt2_encoding


@pytest.fixture(scope="module")
def enc():
    return gpt2_encoding()


class FixedRng:
    """Stands in for ``random.Random``: returns ``values`` in turn and records each call."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = []

    def randint(self, a, b):
        self.calls.append((a, b))
        return self.values.pop(0)


# random_prompt


def test_random_prompt_is_deterministic_per_seed(enc):
    a = random_prompt(enc, 20, random.Random(7))
    b = random_prompt(enc, 20, random.Random(7))
    c = random_prompt(enc, 20, random.Random(8))
    assert a == b
    assert a != c


def test_random_prompt_token_count_is_plausible(enc):
    text = random_prompt(enc, 200, random.Random(0))
    assert len(enc.encode(text)) >= 100


def test_random_prompt_decodes_each_id_alone_and_joins_with_spaces(enc):
    rng = FixedRng([15496, 0, 50255])
    text = random_prompt(enc, 3, rng)
    assert text == " ".join([enc.decode([15496]), enc.decode([0]), enc.decode([50255])])
    assert text.startswith("Hello !")


def test_random_prompt_never_draws_endoftext(enc):
    rng = FixedRng([0, 50255, 1, 2, 3])
    random_prompt(enc, 5, rng)
    assert rng.calls == [(0, 50255)] * 5


def test_random_prompt_of_zero_tokens_is_empty(enc):
    assert random_prompt(enc, 0, random.Random(0)) == ""


# read_prompts


def test_lines_until_empty_line_leave_the_rest_unread():
    stream = io.StringIO("first prompt\n  second prompt  \n\nnot a prompt\n")
    assert read_prompts(stream, None, single=False) == ["first prompt", "second prompt"]
    assert stream.read() == "not a prompt\n"


def test_whitespace_only_line_ends_like_empty_line():
    stream = io.StringIO("one\n   \t\ntwo\n")
    assert read_prompts(stream, None, single=False) == ["one"]
    assert stream.read() == "two\n"


def test_end_of_input_ends_like_empty_line():
    assert read_prompts(io.StringIO("one\ntwo"), None, single=False) == ["one", "two"]
    assert read_prompts(io.StringIO("one\ntwo\n"), None, single=False) == ["one", "two"]


def test_immediate_end_of_input_gives_no_prompts():
    assert read_prompts(io.StringIO(""), None, single=False) == []
    assert read_prompts(io.StringIO(""), None, single=True) == []


def test_questions_are_numbered():
    ask = io.StringIO()
    read_prompts(io.StringIO("a\nb\n\n"), ask, single=False)
    assert ask.getvalue() == (
        "Enter prompt 1 (or press Enter to finish): "
        "Enter prompt 2 (or press Enter to finish): "
        "Enter prompt 3 (or press Enter to finish): "
    )


class FlushCounter(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def test_each_question_is_flushed():
    ask = FlushCounter()
    read_prompts(io.StringIO("a\n"), ask, single=False)
    assert ask.flushes == 2


def test_single_mode_asks_once_and_reads_one_line():
    ask = io.StringIO()
    stream = io.StringIO("  only this  \nnot this\n")
    assert read_prompts(stream, ask, single=True) == ["only this"]
    assert ask.getvalue() == SINGLE_QUESTION == "Enter a prompt to generate text: "
    assert stream.read() == "not this\n"


def test_single_mode_empty_answer_gives_no_prompts():
    stream = io.StringIO("\nlater\n")
    assert read_prompts(stream, None, single=True) == []
    assert stream.read() == "later\n"


def test_prompts_keep_inner_text_and_unicode():
    stream = io.StringIO("Ünïcödé  🎉 prompt\n")
    assert read_prompts(stream, None, single=False) == ["Ünïcödé  🎉 prompt"]


# read_prompts_file


def test_prompts_file_one_per_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("  first \n\n   \nsecond\r\nthird 🎉\rfourth".encode())
    assert read_prompts_file(path) == ["first", "second", "third 🎉", "fourth"]


def test_prompts_file_ignores_byte_order_mark(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"\xef\xbb\xbfHello\n")
    assert read_prompts_file(path) == ["Hello"]


def test_prompts_file_keeps_unicode_line_separators_inside_a_prompt(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a\u2028b\x0cc\n", encoding="utf-8")
    assert read_prompts_file(path) == ["a\u2028b\x0cc"]


def test_missing_prompts_file(tmp_path):
    path = tmp_path / "absent.txt"
    with pytest.raises(InputError, match="cannot read prompts file") as info:
        read_prompts_file(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_prompts_file_that_is_a_directory(tmp_path):
    with pytest.raises(InputError, match="cannot read prompts file") as info:
        read_prompts_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_prompts_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8") as info:
        read_prompts_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["", "\n\n", "   \n\t\n"])
def test_prompts_file_without_prompts(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match="holds no prompt") as info:
        read_prompts_file(path)
    assert str(path) in str(info.value)


def test_a_prompts_file_past_the_size_bound_is_refused(tmp_path, monkeypatch):
    from gpt2fast import prompts

    monkeypatch.setattr(prompts, "MAX_PROMPTS_FILE_BYTES", 64)
    path = tmp_path / "p.txt"
    path.write_text("a prompt\n" * 8)
    with pytest.raises(InputError, match="p.txt is larger than"):
        prompts.read_prompts_file(path)
    path.write_text("a prompt\n" * 7)
    assert prompts.read_prompts_file(path) == ["a prompt"] * 7


def write_ignoring_a_closed_reader(path: Path, content: bytes) -> None:
    try:
        path.write_bytes(content)
    except BrokenPipeError:  # the reader stopped at its bound
        pass


def test_a_stream_without_a_size_is_read_only_to_the_bound(tmp_path, monkeypatch):
    """/dev/zero never ends and a pipe has no size: both are refused after the bound's bytes;
    a pipe within the bound (a shell's <(...)) is read like a file."""
    import threading

    from gpt2fast import prompts

    monkeypatch.setattr(prompts, "MAX_PROMPTS_FILE_BYTES", 1 << 16)
    with pytest.raises(InputError, match="/dev/zero is larger than"):
        prompts.read_prompts_file(Path("/dev/zero"))
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for content, outcome in ((b"one\r\ntwo\rthree\n", ["one", "two", "three"]), (b"x" * (1 << 17), None)):
        writer = threading.Thread(target=write_ignoring_a_closed_reader, args=(pipe, content))
        writer.start()
        if outcome is None:
            with pytest.raises(InputError, match="pipe is larger than"):
                prompts.read_prompts_file(pipe)
        else:
            assert prompts.read_prompts_file(pipe) == outcome
        writer.join(timeout=10)


def test_a_fifo_without_a_writer_reads_as_empty_and_too_many_lines_are_refused(tmp_path, monkeypatch):
    from gpt2fast import prompts

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError, match="fifo holds no prompt"):
        prompts.read_prompts_file(tmp_path / "fifo")
    monkeypatch.setattr(prompts, "MAX_PROMPTS", 4)
    (tmp_path / "p.txt").write_text("a\nb\r\nc\rd\n")
    assert prompts.read_prompts_file(tmp_path / "p.txt") == ["a", "b", "c", "d"]
    (tmp_path / "p.txt").write_text("a\nb\nc\nd\ne")
    with pytest.raises(InputError, match="p.txt has more than 4 lines"):
        prompts.read_prompts_file(tmp_path / "p.txt")
