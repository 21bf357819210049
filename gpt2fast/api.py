"""The Python API: consensus runs and generation from a notebook; the CLI is a layer over it.

    import gpt2fast
    result = gpt2fast.consensus("The quick brown fox", model="gpt2", size=50, matrix=True)
    result.err.shape        # (1, 600, 2): P prompts, L·N steps, (mean |ŷ_0·ŷ_t|, mean G)
    result.err2.shape       # (1, T, T, 600): the cosine-similarity matrices
    result.metadata["model"]
    gpt2fast.generate("Once upon a time", max_length=30).texts[0]

Every argument mirrors a CLI flag of the same name. Bad values raise ``InputError`` (a
``ValueError``) before any work (``validation``: the one place arguments are checked); an
interrupted run (Ctrl-C) returns what it computed, with NaN in the steps it did not reach
and ``metadata["status"] == "interrupted"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .backends import BACKENDS, make_generation, resolve_backend
from .config import DEFAULT_GENERATION_LENGTH, DEFAULT_ITERATIONS, DEFAULT_MODEL, PRESETS, ConsensusFlags, ModelConfig
from .consensus_run import run_on_this_rank
from .distributed import join, shard_by_tokens
from .errors import InputError
from .generation import grow
from .interrupts import graceful_stop
from .outputs import exclusive_outputs, partial_path
from .philox import mix_key
from .plan import RunPlan, plan_run
from .precision import matmul_precision, storage_dtype
from .results import ConsensusResult, load_result
from .tokenizer import gpt2_encoding
from .validation import (
    Label,
    Prompts,
    check_decode,
    check_generation_fits,
    check_matrix_format,
    check_memory_budget,
    check_options,
    check_outputs,
    check_run_fits,
    check_values,
    expected_config,
    parameter,
    prompt_source,
    resolve_device,
)
from .weight_sources import resolve_weights
from .weight_stream import WeightStream
from .weights import Weights

GENERATION_DOMAIN = 0x6E65_7874  # separates the prompts' sampling seeds from any other use of the seed

__all__ = ["ConsensusResult", "GenerationResult", "consensus", "generate", "load_result"]


@dataclass
class GenerationResult:
    """Each prompt grown to ``max_length`` tokens: its text and token ids; exit_status is
    0, or 128 + the signal that stopped generation early."""

    texts: list[str]
    tokens: list[list[int]]
    exit_status: int = 0


def load_weights(weights: str | os.PathLike | Weights | None, model: str | None, seed: int) -> tuple[Weights, str]:
    """The run's weights and model name: a ``Weights`` as given, else ``resolve_weights``
    (a checkpoint path, ``"random"``, or None to search), notes going to stderr, marked
    ``single_use``: the run they are loaded for keeps their only copy."""
    if model is not None and model not in PRESETS:
        raise InputError(f"model must be one of {', '.join(sorted(PRESETS))}, got {model!r}")
    name = model or DEFAULT_MODEL
    if isinstance(weights, Weights):
        if weights.single_use and not weights.state:
            raise InputError("these weights were loaded for one run, which has taken them; load them again")
        return weights, name
    spec = None if weights is None else os.fspath(weights)
    loaded = resolve_weights(spec, name, PRESETS[name], model is not None, seed, warn)
    return dataclasses.replace(loaded, single_use=True), name


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def consensus(
    prompts: Prompts | Callable[[], Prompts] = None,
    *,
    prompts_file: str | os.PathLike | None = None,
    random_prompt: int | None = None,
    random_prompts: int | None = None,
    model: str | None = None,
    weights: str | os.PathLike | Weights | None = None,
    size: int = DEFAULT_ITERATIONS,
    noff: bool = False,
    random_init: bool = False,
    const_reset: bool = False,
    seed: int = 0,
    decode: Sequence[int] = (),
    matrix: bool = False,
    savefile: str | os.PathLike | None = None,
    matrixerror: str | os.PathLike | None = None,
    matrix_every: int = 1,
    matrix_dtype: str = "float32",
    device: str = "auto",
    backend: str = "auto",
    dtype: str = "fp32",
    progress: bool = True,
    memory_budget: int | str | None = None,
    plan: bool = False,
    on_decode: Callable[[int, int, list[int]], None] | None = None,
    second_signal_exits: bool = False,
    label: Label = parameter,
) -> ConsensusResult | RunPlan:
    """Run every prompt through ``size`` iterations of the block stack.

    prompts: a string, a list of strings or of token-id lists, or one token-id list (None:
    the default prompt), or a function returning one of these (called once every other
    argument is checked). Or one of: prompts_file (one prompt per UTF-8 line), random_prompt
    (K random tokens, decoded; random_prompts of them, seeded by ``seed``). weights: a
    checkpoint path, ``"random"``, a ``Weights``, or None (Hugging Face cache, download,
    else seeded random weights with a warning on stderr).
    matrix: also record the T×T matrices (err2); implied by ``matrixerror``. matrix_every K
    keeps G after steps 0, K, 2K, ... only (err2[..., j] is step j·K; the metadata lists
    them), matrix_dtype "float16" halves its bytes.
    savefile / matrixerror: write err / err2 there (``.npy`` added, metadata JSON beside)
    and return them memory-mapped; without them the driver fills arrays in memory, returned
    as they are (no file is made, not even a temporary one; err2 only if it fits in half
    the free memory: else pass ``matrixerror``).
    decode: iterations after which the argmax decoding is taken; on_decode(iteration,
    prompt_index, token_ids) sees each one as it happens (also in ``metadata["decoded"]``).
    memory_budget: bytes (an integer, or a text such as "4GiB") the prompts' batches may
    hold besides the weights (default: the free memory); more prompts than fit run in
    batches, one after another (``batches``).
    plan: check everything and return the run's ``plan.RunPlan`` (outputs' bytes, memory,
    batches, a time floor) instead of running it: no weights loaded, no file written.
    Under torchrun (``distributed``) every rank calls this with the same arguments: the
    prompts are shared among the ranks and written to the files (savefile is needed), and
    every rank returns the whole result once all ranks have ended.
    Ctrl-C stops the run at the next iteration (the result holds NaN after it); a second
    one raises KeyboardInterrupt, or, with ``second_signal_exits`` (the CLI), ends the
    process. label: how refusals name an argument (the CLI passes its flag names).
    """
    team = join()
    sources = []  # rank 0's prompt source: read once every other argument is checked

    def check_arguments() -> tuple:
        checked = check_consensus_arguments(
            label, noff=noff, random_init=random_init, const_reset=const_reset, matrix=matrix, progress=progress,
            second_signal_exits=second_signal_exits, model=model, backend=backend, savefile=savefile,
            matrixerror=matrixerror, on_decode=on_decode, size=size, seed=seed, decode=decode, device=device,
            dtype=dtype, memory_budget=memory_budget, distributed=team.distributed, matrix_every=matrix_every,
            matrix_dtype=matrix_dtype, plan=plan)
        sources.append(prompt_source(prompts, prompts_file, random_prompt, random_prompts, checked[1], label))
        # before anything heavy: the prompts and the files' sizes with the sizes known so far
        return *checked, expected_config(weights, model, label), uuid.uuid4().hex

    (size, seed, decode, device_, backend, err_path, gram_path, memory_budget, matrix_format,
     expected, run_id) = team.decide(check_arguments)
    device_ = team.device(device_)
    place = (backend, device_, storage_dtype(dtype))
    read = []  # rank 0's prompts as given, for a second check once the weights tell their sizes

    def check_prompts(cfg: ModelConfig, weights_to_load: bool) -> tuple[list[str], list[list[int]]]:
        if not read:
            read.append(sources[0]())
        fits = check_run_fits(read[0], cfg, size, matrix, err_path, gram_path, *place,
                              weights_to_load=weights_to_load, memory_budget=memory_budget,
                              matrix_format=matrix_format)
        if not outputs_locked:
            outputs.enter_context(exclusive_outputs([path for path in (err_path, gram_path) if path is not None]))
            outputs_locked.append(True)
        return fits

    outputs_locked: list[bool] = []
    with contextlib.ExitStack() as outputs:
        outputs.callback(team.leave)
        if plan:
            return plan_run(expected, sources[0](), size, err_path, gram_path, matrix, matrix_format, *place,
                            weights_to_load=not isinstance(weights, Weights), memory_budget=memory_budget)
        texts, token_lists = team.decide(lambda: check_prompts(expected, not isinstance(weights, Weights)))
        loaded, model_name = load_weights(weights, model, seed)
        if loaded.config != expected:  # sizes the checkpoint told only on loading: check again
            texts, token_lists = team.decide(lambda: check_prompts(loaded.config, False))
        flags = ConsensusFlags(iterations=size, noff=noff, random_init=random_init, const_reset=const_reset,
                               seed=seed, decode_iterations=decode)
        meta, status, in_memory = run_on_this_rank(
            loaded, model_name, texts, token_lists, flags, device=device_, dtype=dtype, backend=backend,
            err_path=err_path, gram_path=gram_path, wants_gram=matrix or gram_path is not None,
            on_decode=on_decode or (lambda *_: None), show_progress=progress,
            second_signal_exits=second_signal_exits, team=team, memory_budget=memory_budget,
            matrix_format=matrix_format, run_id=run_id,
        )
        promoted = meta["status"] != "failed"
        err = in_memory.err if err_path is None else mapped_array(err_path if promoted else partial_path(err_path))
        err2 = in_memory.err2 if gram_path is None else mapped_array(gram_path if promoted else partial_path(gram_path))
    return ConsensusResult(err=err, err2=err2, metadata=meta, exit_status=status)


def check_consensus_arguments(label: Label, *, noff, random_init, const_reset, matrix, progress,
                              second_signal_exits, model, backend, savefile, matrixerror, on_decode, size, seed,
                              decode, device, dtype, memory_budget, distributed: bool, matrix_every=1,
                              matrix_dtype="float32", plan=False) -> tuple:
    """``consensus``'s arguments checked (everything but the prompts and the weights) and
    resolved: (size, seed, decode, device, backend, err_path, gram_path, memory_budget,
    matrix_format)."""
    check_options(label, dict(noff=noff, random_init=random_init, const_reset=const_reset, matrix=matrix,
                              progress=progress, second_signal_exits=second_signal_exits, plan=plan),
                  dict(model=(model, (None, *PRESETS)), backend=(backend, BACKENDS)),
                  dict(savefile=savefile, matrixerror=matrixerror), dict(on_decode=on_decode))
    check_values(label, size=size, seed=seed)
    size, seed = operator.index(size), operator.index(seed)  # numpy integers become ints (JSON, seeding)
    decode = check_decode(decode, size, label)
    device_ = resolve_device(device, dtype, label)
    backend = resolve_backend(backend, device_, dtype, label)
    err_path, gram_path = check_outputs(savefile, matrixerror, label)
    if distributed and plan:
        raise InputError(f"{label('plan')} describes a run of one process: run it without torchrun")
    if distributed and (err_path is None or (matrix and gram_path is None)):
        raise InputError(f"under torchrun every rank writes its rows of the files: give {label('savefile')}"
                         f"{' and ' + label('matrixerror') if matrix else ''}")
    matrix_format = check_matrix_format(matrix_every, matrix_dtype, matrix or gram_path is not None, label)
    return (size, seed, decode, device_, backend, err_path, gram_path, check_memory_budget(memory_budget, label),
            matrix_format)


def mapped_array(path: Path) -> np.ndarray:
    """The array a run wrote to ``path``, memory-mapped read-only."""
    return np.load(path, mmap_mode="r")


def generate(
    prompts: Prompts | Callable[[], Prompts] = None,
    *,
    prompts_file: str | os.PathLike | None = None,
    random_prompt: int | None = None,
    random_prompts: int | None = None,
    max_length: int = DEFAULT_GENERATION_LENGTH,
    model: str | None = None,
    weights: str | os.PathLike | Weights | None = None,
    size: int = 1,
    noff: bool = False,
    random_init: bool = False,
    const_reset: bool = False,
    seed: int = 0,
    top_k: int = 10,
    temperature: float = 1.0,
    device: str = "auto",
    backend: str = "auto",
    dtype: str = "fp32",
    progress: bool = True,
    on_text: Callable[[str], None] | None = None,
    second_signal_exits: bool = False,
    label: Label = parameter,
) -> GenerationResult:
    """Grow each prompt to ``max_length`` tokens as ``--use-model`` does: top-k sampling
    from the model whose every forward pass applies the block stack ``size`` times, each
    prompt with its own generator (``prompt_seed``: ``seed`` for the first). on_text(text)
    sees each finished prompt's text. Under torchrun the prompts are shared among the ranks
    by the tokens they grow; every rank returns all texts once all ranks have ended, and
    on_text is called on rank 0 then, in prompt order. Prompts, Ctrl-C and ``label`` as in
    ``consensus``."""
    team = join()
    sources = []  # rank 0's prompt source

    def check_arguments() -> tuple:
        check_options(label, dict(noff=noff, random_init=random_init, const_reset=const_reset, progress=progress,
                                  second_signal_exits=second_signal_exits),
                      dict(model=(model, (None, *PRESETS)), backend=(backend, BACKENDS)),
                      callbacks=dict(on_text=on_text))
        check_values(label, size=size, seed=seed, top_k=top_k, temperature=temperature, max_length=max_length)
        checked = (*map(operator.index, (size, seed, top_k, max_length)), float(temperature))
        device_ = resolve_device(device, dtype, label)
        sources.append(prompt_source(prompts, prompts_file, random_prompt, random_prompts, checked[1], label))
        return *checked, device_, resolve_backend(backend, device_, dtype, label), expected_config(weights, model, label)

    size, seed, top_k, max_length, temperature, device_, backend, expected = team.decide(check_arguments)
    device_, storage = team.device(device_), storage_dtype(dtype)
    read = []  # rank 0's prompts, for a second check once the weights tell their sizes

    def check_prompts(cfg: ModelConfig) -> list[list[int]]:
        if not read:
            read.append(sources[0]())  # before anything heavy: prompts, context and cache with the sizes known so far
        return check_generation_fits(read[0], cfg, max_length, size, storage, device_, label)

    try:
        token_lists = team.decide(lambda: check_prompts(expected))
        loaded, _ = load_weights(weights, model, seed)
        cfg = loaded.config
        if cfg != expected:  # sizes the checkpoint told only on loading: check again
            token_lists = team.decide(lambda: check_prompts(cfg))
        stream = WeightStream(cfg, loaded.state, seed=seed, random_init=random_init, const_reset=const_reset,
                              device=device_, dtype=storage, owned=loaded.single_use)
        new_tokens = [max(0, max_length - len(tokens)) for tokens in token_lists]
        mine = shard_by_tokens([max(1, count) for count in new_tokens], team.world_size)[team.rank]
        encoding = gpt2_encoding()
        grown: dict[int, list[int]] = {}
        with graceful_stop(second_signal_exits) as stop, matmul_precision(dtype), tqdm(
            total=sum(new_tokens[i] for i in mine), desc="generate", unit="tok", file=sys.stderr, mininterval=0.5,
            disable=not (progress and team.leader),
        ) as bar:
            for index in mine:
                grown[index] = grow(make_generation(backend, stream, noff, size, dtype), token_lists[index],
                                    max_length=max_length, top_k=top_k, temperature=temperature,
                                    generator=torch.Generator().manual_seed(prompt_seed(seed, index)),
                                    on_token=lambda: (bar.update(1), team.share_stop(stop)), stop=stop)
                if on_text is not None and not team.distributed:
                    on_text(encoding.decode(grown[index]))
                if stop.requested:
                    break
            team.share_stop(stop)
            elapsed, produced = bar.format_dict["elapsed"], bar.n
        for part in team.gather(grown):  # every rank's prompts, once all have ended (only this one alone)
            grown.update(part)
    finally:
        team.leave()
    result = GenerationResult(texts=[], tokens=[])
    for index in sorted(grown):
        result.tokens.append(grown[index])
        result.texts.append(encoding.decode(grown[index]))
        if on_text is not None and team.distributed and team.leader:
            on_text(result.texts[-1])
    if progress and team.leader:
        spread = f" (rank 0 of {team.world_size})" if team.distributed else ""
        warn(f"gpt2fast: generated {produced} tokens{spread} in {elapsed:.1f} s "
             f"({produced / elapsed if elapsed else 0:.2f} tokens/s)")
    result.exit_status = stop.exit_status()
    return result


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s sampling: ``seed`` for the first, a mix of both for the
    others, so each prompt's text depends on neither the others nor the ranks."""
    return seed if index == 0 else mix_key(seed, GENERATION_DOMAIN, index) & (2**63 - 1)
