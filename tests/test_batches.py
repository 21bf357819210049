"""More prompts than fit: batches planned from the sizes, run one after another into the same
files, equal to one big batch (``batches``, ``memory_budget``)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

import gpt2fast
from gpt2fast.backends import batch_prompt_limit
from gpt2fast.batches import plan_batches
from gpt2fast.config import PRESETS
from gpt2fast.cli import main
from gpt2fast.errors import InputError
from gpt2fast.memory import consensus_memory
from gpt2fast.validation import check_memory_budget, parameter
from tiny_models import tiny_config

CFG = tiny_config()
LENGTHS = [600, 90, 500, 300, 40, 420]
PROMPTS = [[int(t) for t in np.random.default_rng(n).integers(0, 50000, size=n)] for n in LENGTHS]
SIZE = 2


def needs(lengths: list[int]) -> dict[str, int]:
    return consensus_memory(CFG, lengths, SIZE, True, "torch", torch.device("cpu"), 4)


BUDGET = needs([600, 90])["host"]  # two prompts padded to 600 tokens: three batches of six


def test_prompts_that_fit_together_run_as_one_batch_in_their_order():
    assert plan_batches([3, 1, 2], LENGTHS, needs, {"host": 1 << 40}) == [[3, 1, 2]]
    assert plan_batches([], LENGTHS, needs, {"host": 1}) == []


def test_more_prompts_go_longest_first_into_batches_within_the_budget():
    batches = plan_batches(list(range(len(LENGTHS))), LENGTHS, needs, {"host": BUDGET})
    assert batches == [[0], [2, 5], [3, 1, 4]]
    assert all(needs([LENGTHS[i] for i in batch])["host"] <= BUDGET for batch in batches)


def test_a_backend_bound_on_prompts_per_batch_splits_them():
    """Triton's launch grids bound the prompts of a batch (gpt2-xl: (65535 - 128) // 48 layers);
    the batches then go longest first as for memory."""
    assert batch_prompt_limit("torch", PRESETS["gpt2-xl"]) is None
    assert batch_prompt_limit("triton", PRESETS["gpt2-xl"]) == 1362
    assert batch_prompt_limit("triton", PRESETS["gpt2"]) == 5450
    batches = plan_batches(list(range(len(LENGTHS))), LENGTHS, needs, {"host": 1 << 40}, max_prompts=4)
    assert batches == [[0, 2, 5, 3], [1, 4]]


def test_a_prompt_too_large_alone_is_refused():
    with pytest.raises(InputError, match=r"one prompt of 600 tokens needs at least .* of host memory"):
        plan_batches([1, 0], LENGTHS, needs, {"host": needs([600])["host"] - 1})


def test_batches_write_what_one_batch_writes(tiny_checkpoint, tmp_path, capsys):
    common = dict(weights=tiny_checkpoint, size=SIZE, backend="torch", decode=[1])
    one = gpt2fast.consensus(PROMPTS, matrix=True, progress=False, **common)
    split = gpt2fast.consensus(PROMPTS, savefile=tmp_path / "E", matrixerror=tmp_path / "m",
                               memory_budget=f"{BUDGET} B", **common)
    (rank,) = split.metadata["ranks"]
    assert [batch["prompts"] for batch in rank["batches"]] == [[0], [2, 5], [3, 1, 4]]
    assert all(batch["status"] == "complete" and batch["iterations_completed"] == SIZE for batch in rank["batches"])
    assert split.metadata["memory_budget"] == BUDGET
    assert "consensus, batch 3/3" in capsys.readouterr().err
    np.testing.assert_allclose(split.err, one.err, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.err2, one.err2, rtol=1e-5, atol=1e-6)
    assert split.metadata["decoded"] == one.metadata["decoded"]


def test_a_stop_in_the_second_batch_keeps_the_first_and_says_where_each_got(tiny_checkpoint, tmp_path):
    def stop_in_batch_two(iteration: int, prompt: int, tokens: list[int]) -> None:
        if prompt == 2 and iteration == 0:
            os.kill(os.getpid(), signal.SIGINT)

    result = gpt2fast.consensus(PROMPTS, weights=tiny_checkpoint, size=SIZE, backend="torch", decode=[0, 1],
                                savefile=tmp_path / "E", matrixerror=tmp_path / "m", memory_budget=BUDGET,
                                on_decode=stop_in_batch_two, progress=False)
    assert result.exit_status == 128 + signal.SIGINT and result.metadata["status"] == "interrupted"
    first, second, third = result.metadata["ranks"][0]["batches"]
    assert (first["status"], first["iterations_completed"]) == ("complete", SIZE)
    assert (second["status"], second["iterations_completed"]) == ("interrupted", 1)
    assert (third["status"], third["iterations_completed"]) == ("pending", 0)
    assert result.metadata["iterations_completed"] == 0
    steps = second["iterations_completed"] * CFG.n_layer
    assert np.isfinite(result.err[0]).all()
    for prompt in second["prompts"]:
        assert np.isfinite(result.err[prompt, :steps]).all() and np.isnan(result.err[prompt, steps:]).all()
    assert np.isnan(result.err[third["prompts"]]).all() and np.isnan(result.err2[third["prompts"]]).all()


@pytest.mark.parametrize("value,count", [("4GiB", 4 << 30), ("2 GB", 2 * 10**9), ("1.5mib", 3 << 19),
                                         (5 << 20, 5 << 20), (np.int64(1 << 21), 1 << 21), ("3000000", 3_000_000)])
def test_memory_budgets_are_bytes_with_or_without_a_unit(value, count):
    assert check_memory_budget(value, parameter) == count


@pytest.mark.parametrize("value,message", [
    ("lots", "--memory-budget must be bytes, such as 4GiB"), ("12 parsecs", "--memory-budget must be bytes"),
    ("1KiB", "--memory-budget must be at least 1 MiB, got 1024 bytes"), ("inf GB", "--memory-budget must be a finite size"),
    ("-3GiB", "--memory-budget must be at least 1 MiB")])
def test_a_bad_memory_budget_is_one_line(value, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--weights", "random", "--prompt", "x", f"--memory-budget={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpt2fast: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
