"""Errors raised by weight and tokenizer loaders."""


class WeightsError(ValueError):
    """A weights file that is missing, malformed, truncated or of the wrong architecture.

    The message always names the file and says what to do.
    """


class ChatTemplateError(WeightsError):
    """A model file's chat template that is unsafe, too large, too slow, or rejects the messages.

    Raised instead of jinja2's ``SecurityError``/``TemplateError`` (and instead of running the
    template's code): the message names the model file and says what to do.
    """
