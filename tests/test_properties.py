"""Property-based attacks (hypothesis, a few seconds each): whatever the command line or the
bytes of a checkpoint or result file, the CLI ends with status 0, or with status 2, one
``gpt2fast: error:`` line and the directory as it was."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2fast.cli import main

# flag -> the values tried: valid, out of range, malformed (none asks for a long run: sizes
# are small or so large that the disk check refuses them)
FLAG_VALUES = {
    "--size": ["1", "2", "0", "-1", "x", "1e3", "3.5", "", "99999999999999999999"],
    "--seed": ["0", "7", "-1", "x", str(2**64), str(2**64 - 1)],
    "--decode": ["0", "0,1", "1", "5", "-1", "x", "", "0,"],
    "--dtype": ["fp32", "bf16", "tf32", "fp8"],
    "--backend": ["auto", "torch", "jax"],
    "--device": ["cpu", "cuda", "tpu"],
    "--savefile": ["E", "E.npy", "", " ", "no/such/dir/E", "/proc/E", "."],
    "--matrixerror": ["m", "E", "", "no/such/dir/m", "."],
    "--random-prompt": ["3", "0", "5000", "x"],
    "--random-prompts": ["1", "2", "0", "x"],
    "--use-model": ["6", "0", "2000", "x"],
    "--top-k": ["1", "0", "50258", "x"],
    "--temperature": ["1", "0", "nan", "1e-300", "-1", "inf"],
    "--model": ["gpt2", "gpt3"],
}
SWITCHES = ["--noff", "--random-init", "--const-reset", "--fast", "-x"]


@st.composite
def command_lines(draw) -> list[str]:
    argv = []
    for flag in draw(st.lists(st.sampled_from(sorted(FLAG_VALUES) + SWITCHES), max_size=5)):
        argv.append(flag)
        if flag in FLAG_VALUES:
            argv.append(draw(st.sampled_from(FLAG_VALUES[flag])))
    if draw(st.booleans()):  # a prompt of any text (else the default prompt source: --prompt below)
        argv += ["--prompt", draw(st.text(max_size=12))]
    return argv


def snapshot(directory: Path) -> dict:
    return {path.name: path.read_bytes() if path.is_file() else None for path in directory.iterdir()}


@contextlib.contextmanager
def inside_fresh_directory():
    with tempfile.TemporaryDirectory() as folder:
        previous = os.getcwd()
        os.chdir(folder)
        try:
            Path("E.npy").write_bytes(b"an earlier result")
            yield Path(folder)
        finally:
            os.chdir(previous)


def check_outcome(argv: list[str], capsys) -> None:
    capsys.readouterr()
    with inside_fresh_directory() as folder:
        before = snapshot(folder)
        status = main(argv)
        err = capsys.readouterr().err
        assert status in (0, 2), (argv, status, err)
        if status == 2:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("gpt2fast: error:"), (argv, err)
            assert snapshot(folder) == before, argv


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_any_command_line_runs_or_is_refused_in_one_line(argv, tiny_checkpoint, capsys):
    prompt = [] if "--prompt" in argv or "--random-prompt" in argv else ["--prompt", "a b"]
    check_outcome(["--weights", str(tiny_checkpoint), *prompt, *argv], capsys)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.binary(max_size=64), config=st.one_of(st.none(), st.text(max_size=40)))
def test_any_checkpoint_bytes_are_refused_in_one_line(header, config, capsys, tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoint")
    (directory / "model.safetensors").write_bytes(header)
    if config is not None:
        (directory / "config.json").write_text(config)
    check_outcome(["--weights", str(directory), "--size", "1", "--prompt", "a b"], capsys)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=st.binary(max_size=200), metadata=st.one_of(st.none(), st.text(max_size=60)))
def test_any_result_file_bytes_plot_or_are_refused_in_one_line(array, metadata, capsys):
    capsys.readouterr()
    with inside_fresh_directory() as folder:
        (folder / "R.npy").write_bytes(array)
        if metadata is not None:
            (folder / "R.json").write_text(metadata)
        before = snapshot(folder)
        status = main(["plot", "R.npy"])
        err = capsys.readouterr().err
        assert status in (0, 2), (array, metadata, err)
        if status == 2:
            assert err.count("\n") == 1 and err.startswith("gpt2fast: error:"), err
            assert snapshot(folder) == before


@pytest.mark.parametrize("argv", [["--size", "1", "--matrixerror", "m", "--decode", "0"]])
def test_a_valid_command_line_writes_its_files(argv, tiny_checkpoint, capsys):
    """The property's other branch really runs: a valid line writes the outputs."""
    with inside_fresh_directory() as folder:
        assert main(["--weights", str(tiny_checkpoint), "--prompt", "a b", *argv]) == 0
        assert {"Eplot.npy", "Eplot.json", "m.npy", "m.json"} <= set(os.listdir(folder))
