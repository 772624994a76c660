"""Edit requests and their tokenisation (subject position, target ids), with clear errors.

A request rewrites one fact ``(subject, relation) -> target_new``. The prompt is
either a template with ``"{}"`` where the subject goes ("The capital of {} is")
or a full prompt that contains the subject verbatim ("The capital of France is").
The key of a locate-and-edit method is read at the subject's *last* token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

# the tiny random models' tokenizer (one definition, in jaxlm.weights), re-exported here
from jaxlm.weights.tokenizer import ByteTokenizer  # noqa: F401


class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class EditRequest:
    """One counterfactual edit.

    Attributes:
        prompt: template with "{}" for the subject, or a full prompt containing it.
        subject: the subject string ("France").
        target_new: the new object, with its leading space (" Vienna").
        target_true: the old object (" Paris"), optional; used by the metrics.
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject) if "{}" in self.prompt else self.prompt

    @property
    def template(self) -> str:
        """The prompt as a template with "{}" at the subject's (last) occurrence."""
        if "{}" in self.prompt:
            return self.prompt
        i = self.prompt.rfind(self.subject)
        if not self.subject or i < 0:
            raise ValueError(
                f"EditRequest: subject {self.subject!r} does not occur in prompt {self.prompt!r}; "
                "put the subject in the prompt or use a template with '{}'."
            )
        return self.prompt[:i].replace("{", "{{").replace("}", "}}") + "{}" + self.prompt[
            i + len(self.subject) :
        ].replace("{", "{{").replace("}", "}}")


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one (context-prefixed) prompt and the subject's last-token index."""

    ids: tuple[int, ...]
    subject_last: int


def subject_last_index(tok: TokenizerLike, text: str, subject_end: int, ids: Sequence[int]) -> int:
    """Index of the token that covers character ``subject_end - 1`` of ``text``.

    Encodes ``text[:subject_end]``; if that is a prefix of ``ids`` its last token
    is the answer, else falls back to decoding growing prefixes of ``ids``.
    """
    head = tok.encode(text[:subject_end])
    if head and list(ids[: len(head)]) == head:
        return len(head) - 1
    for i in range(len(ids)):
        if len(tok.decode(list(ids[: i + 1]))) >= subject_end:
            return i
    raise ValueError(f"could not locate the subject end (char {subject_end}) in {text!r}")


def encode_prompt(tok: TokenizerLike, template: str, subject: str, context: str = "{}") -> EncodedPrompt:
    """Encodes ``context.format(template.format(subject))`` and finds the subject's last token.

    Args:
        tok: tokenizer with ``encode``/``decode``.
        template: prompt template with one "{}".
        subject: subject string.
        context: a prefix template with "{}" where the prompt goes ("Because it rained. {}").
    """
    if template.count("{}") != 1:
        raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}'")
    if "{}" not in context:
        raise ValueError(f"context {context!r} must contain '{{}}' where the prompt goes")
    prompt = template.format(subject)
    ci = context.index("{}")
    text = context[:ci] + prompt + context[ci + 2 :]
    subject_end = ci + template.index("{}") + len(subject)
    ids = tok.encode(text)
    if not ids:
        raise ValueError(f"prompt {text!r} encodes to no tokens")
    return EncodedPrompt(tuple(ids), subject_last_index(tok, text, subject_end, ids))


def encode_target(tok: TokenizerLike, prompt: str, target: str) -> list[int]:
    """Token ids of ``target`` as it continues ``prompt`` (BPE-consistent when possible)."""
    if not target:
        raise ValueError("target must be a non-empty string (e.g. ' Vienna')")
    full = tok.encode(prompt + target)
    head = tok.encode(prompt)
    if full[: len(head)] == head and len(full) > len(head):
        return full[len(head) :]
    return tok.encode(target)


def target_ids(
    tok: TokenizerLike, request: EditRequest, *, single_token: bool, which: str = "target_new"
) -> list[int]:
    """Token ids of the request's new (or true) object; checks the single-token requirement."""
    target = getattr(request, which)
    if target is None:
        raise ValueError(f"request {request!r} has no {which}")
    ids = encode_target(tok, request.text, target)
    if single_token and len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        raise ValueError(
            f"{which} {target!r} is {len(ids)} tokens {pieces}, but this method/metric requires a "
            "single-token target: pick a single-token object (e.g. ' Vienna', ' Oslo') or "
            "set single_token=False."
        )
    return ids
