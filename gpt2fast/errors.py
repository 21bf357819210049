"""The one exception type that means "the user asked for something we cannot do"."""


class InputError(ValueError):
    """Bad flag value, unreadable or mismatched weights, unwritable output, too-long prompt.

    The CLI prints ``gpt2fast: error: <message>`` on one line and exits with status 2, so the
    message must be a single line that names the problem.
    """
