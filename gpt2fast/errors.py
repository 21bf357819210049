"""The one exception type that means "the user asked for something we cannot do", and the
command-line parser that turns argparse's complaints into it."""

import argparse


class InputError(ValueError):
    """Bad flag value, unreadable or mismatched weights, unwritable output, too-long prompt.

    The CLI prints ``gpt2fast: error: <message>`` on one line and exits with status 2, so the
    message must be a single line that names the problem.
    """


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are an ``InputError`` (one line, exit status 2 in the CLIs)."""

    def error(self, message: str):
        raise InputError(message)
