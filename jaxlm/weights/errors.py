"""Errors raised by weight and tokenizer loaders."""


class WeightsError(ValueError):
    """A weights file that is missing, malformed, truncated or of the wrong architecture.

    The message always names the file and says what to do.
    """
