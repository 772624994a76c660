"""Byte-level BPE tokenizer rebuilt from GGUF metadata with ``tokenizers``, plus chat templates.

The GGUF stores the vocabulary (``tokenizer.ggml.tokens``), the merges, token
types (3 = control/special) and a Jinja chat template. SmolLM2's pre-tokenizer
(llama.cpp's "smollm") splits digits individually, then applies the GPT-2
byte-level regex; we rebuild exactly that.

Model files are untrusted input (DESIGN.md, "Untrusted input"):

* The chat template is rendered by ``jinja2.sandbox.ImmutableSandboxedEnvironment`` (no
  attribute escapes, no mutation of the messages) with limits on the template's size, the
  rendered size, integer arguments (``'x' * 10**9``, ``center(10**9)``), memory growth
  and wall time. Any violation raises :class:`ChatTemplateError` naming the file.
* Message content never becomes control tokens: ``apply_chat_template`` returns a
  :class:`ChatText` (a ``str``) that remembers which characters came from the template
  and which from message content; ``encode`` of a ``ChatText`` parses special tokens only
  in the template's characters, so ``<|im_end|>`` typed by a user stays plain text.
  For benign messages the ids equal those of encoding the rendered string.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

from jaxlm.weights.errors import ChatTemplateError, WeightsError

CONTROL = 3

# Limits on what a model file's chat template may do (a real template is a few KiB and
# renders a conversation in milliseconds).
MAX_TEMPLATE_CHARS = 256 * 1024
MAX_RENDER_CHARS = 1_000_000  # template-made characters, on top of 4x the message content
MAX_RENDER_SECONDS = 5.0
MAX_RENDER_GROWTH_BYTES = 256 * 1024 * 1024
MAX_INT_ARG = 1_000_000  # integer arguments/operands of calls, filters, '*' and '**'
_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_HUGE_WIDTH = re.compile(r"\d{7,}")  # '%0999999999d', '{:>99999999}'


class ChatText(str):
    """A rendered chat prompt that remembers where message content sits in it.

    ``segments`` is a tuple of ``(text, from_template)``; their concatenation is the string.
    ``Tokenizer.encode`` parses special tokens only in the ``from_template`` segments.
    Any ``str`` operation (``+``, slicing, ``format``) returns a plain ``str`` and loses
    this protection: pass the ``ChatText`` itself to ``encode``.
    """

    segments: tuple[tuple[str, bool], ...]

    def __new__(cls, segments: Sequence[tuple[str, bool]]):
        obj = super().__new__(cls, "".join(t for t, _ in segments))
        obj.segments = tuple((t, bool(f)) for t, f in segments if t)
        return obj

    def __reduce__(self):  # pickle/deepcopy keep the segments
        return (ChatText, (self.segments,))


class _RenderLimit(Exception):
    pass


class _Guard:
    """Aborts template code that runs too long or grows memory too much (line trace hook)."""

    def __init__(self, seconds: float, growth: int):
        self.seconds, self.growth = seconds, growth

    @staticmethod
    def _rss() -> int | None:
        """Resident memory in bytes (Linux), else the peak so far (other Unixes), else None."""
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):
            pass
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak if sys.platform == "darwin" else peak * 1024
        except (ImportError, OSError, ValueError):
            return None

    def __enter__(self):
        self.t0 = time.monotonic()
        self.rss0 = self._rss()
        self.prev = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.prev)
        return False

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename == "<template>":
            self.check()
            return self._local
        return None

    def _local(self, frame, event, arg):
        if event == "line":
            self.check()
        return self._local

    def check(self):
        if time.monotonic() - self.t0 > self.seconds:
            raise _RenderLimit(f"rendering took longer than {self.seconds:g} s")
        if self.rss0 is not None:
            rss = self._rss()
            if rss is not None and rss - self.rss0 > self.growth:
                raise _RenderLimit(f"rendering grew memory by more than {self.growth >> 20} MiB")


def _check_int(x: Any) -> None:
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_INT_ARG:
        raise _RenderLimit(f"integer {x} exceeds the template limit {MAX_INT_ARG}")
    if isinstance(x, str) and _HUGE_WIDTH.search(x) and ("%" in x or "{" in x):
        raise _RenderLimit("format string with a huge width or precision")


def _guard_callable(f):
    @functools.wraps(f)
    def guarded(*args, **kwargs):
        for a in (*args, *kwargs.values()):
            _check_int(a)
        return f(*args, **kwargs)

    return guarded


@functools.lru_cache(maxsize=1)
def _sandbox():
    """The shared sandboxed Jinja environment (HF transformers' settings and helpers)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%"})

        def call_binop(self, context, operator, left, right):
            if operator in ("*", "**"):
                _check_int(left)
                _check_int(right)
                if operator == "**" and isinstance(right, int) and abs(right) > 64:
                    raise _RenderLimit(f"exponent {right} exceeds the template limit 64")
                size = None
                if isinstance(left, (str, list, tuple)) and isinstance(right, int):
                    size = len(left) * right
                elif isinstance(right, (str, list, tuple)) and isinstance(left, int):
                    size = len(right) * left
                if size is not None and size > MAX_INT_ARG:
                    raise _RenderLimit(
                        f"repetition of {size} items exceeds the limit {MAX_INT_ARG}"
                    )
            if operator == "%":
                _check_int(left)
            return super().call_binop(context, operator, left, right)

        def wrap_str_format(self, value):
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                _check_int(value.__self__)  # '{:>999999999}'.format(...)
            return wrapped

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's convention)
            for a in (*args, *kwargs.values()):
                _check_int(a)
            return super().call(__context, __obj, *args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(str(message))

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        _check_int(fmt)
        return time.strftime(str(fmt))

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    for name, f in list(env.filters.items()):
        env.filters[name] = _guard_callable(f)
    env.globals.pop("lipsum", None)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Messages as a list of ``{"role": str, "content": str}``; a clear ``ValueError`` otherwise.

    Roles must be plain names (``user``, ``assistant``, ``system``, ``tool``, ...): the
    template writes them next to control tokens, so they may not carry any markup. Other
    fields (``name``, ...) may be strings (treated as untrusted text, like the content),
    numbers, booleans or None; nested lists and dicts (tool calls) are not supported.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("chat messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"chat message {m!r} must be a dict with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise ValueError(
                f"chat message role {role!r} must be a plain name such as 'user', 'assistant' "
                "or 'system' (letters, digits, '_', '-', '.')"
            )
        if not isinstance(content, str):
            raise ValueError(f"chat message content must be a str, got {type(content).__name__}")
        for key, value in m.items():
            if not isinstance(key, str) or not (
                value is None or isinstance(value, (str, int, float, bool))
            ):
                raise ValueError(
                    f"chat message field {key!r} holds a {type(value).__name__}; jaxlm chat "
                    "messages take strings, numbers, booleans or None only"
                )
        out.append(dict(m))
    return out


@dataclasses.dataclass
class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the special ids and chat template of a model.

    Attributes:
        hf: the underlying ``tokenizers.Tokenizer``.
        eos_id: end-of-sequence id (generation stops on it).
        bos_id: beginning-of-sequence id or None.
        pad_id: padding id.
        chat_template: Jinja template string or None (untrusted: rendered in a sandbox).
        add_bos: prepend ``bos_id`` when encoding.
        stop_ids: ids that end an assistant turn (eos, <|im_end|>, ...).
        source: where the tokenizer came from (named in errors).
    """

    hf: Any
    eos_id: int
    bos_id: int | None = None
    pad_id: int = 0
    chat_template: str | None = None
    add_bos: bool = False
    stop_ids: tuple[int, ...] = ()
    source: str = "tokenizer"
    _plain: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _compiled: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _special_re: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    # ------------------------------------------------------------------ encoding
    def _special_split(self):
        """(regex splitting text at special-token strings, {string: id})."""
        if self._special_re is None:
            specials = {t.content: i for i, t in self.hf.get_added_tokens_decoder().items()
                        if t.special}
            alts = sorted(specials, key=len, reverse=True)  # leftmost-longest like tokenizers
            pattern = re.compile("(" + "|".join(map(re.escape, alts)) + ")") if alts else None
            self._special_re = (pattern, specials)
        return self._special_re

    def _encode_plain(self, text: str) -> list[int]:
        """Encodes ``text`` with special-token strings treated as ordinary text."""
        if not text:
            return []
        if self._plain is None:
            from tokenizers import Tokenizer as HFTokenizer

            plain = HFTokenizer.from_str(self.hf.to_str())
            plain.encode_special_tokens = True
            self._plain = plain
        return self._plain.encode(text, add_special_tokens=False).ids

    def _encode_chat_text(self, text: ChatText) -> list[int]:
        pattern, specials = self._special_split()
        ids: list[int] = []
        pending: list[str] = []  # text between two control tokens, encoded as one piece
        for seg, from_template in text.segments:
            if not from_template or pattern is None:
                pending.append(seg)
                continue
            for k, part in enumerate(pattern.split(seg)):
                if k % 2:  # a special token written by the template
                    ids += self._encode_plain("".join(pending))
                    pending = []
                    ids.append(specials[part])
                else:
                    pending.append(part)
        return ids + self._encode_plain("".join(pending))

    def encode(self, text: str, add_bos: bool | None = None, *, parse_special: bool = True
               ) -> list[int]:
        """Token ids of ``text``.

        A :class:`ChatText` (what ``apply_chat_template`` returns) gets control tokens only
        where the template wrote them. For a plain ``str``, ``parse_special=False`` encodes
        special-token strings as ordinary text (use it for any untrusted text).
        """
        if isinstance(text, ChatText):
            ids = self._encode_chat_text(text)
        elif parse_special:
            ids = self.hf.encode(text, add_special_tokens=False).ids
        else:
            ids = self._encode_plain(text)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(map(int, ids)), skip_special_tokens=skip_special)

    def token_str(self, i: int) -> str:
        return self.hf.decode([int(i)], skip_special_tokens=False)

    # ------------------------------------------------------------------ chat template
    def _template(self):
        import jinja2

        if self._compiled is None:
            src = self.chat_template
            if not isinstance(src, str):
                raise ChatTemplateError(
                    f"{self.source}: tokenizer.chat_template is a {type(src).__name__}, not a "
                    "string; the model file is malformed: pass plain text prompts instead"
                )
            if len(src) > MAX_TEMPLATE_CHARS:
                raise ChatTemplateError(
                    f"{self.source}: the chat template has {len(src)} characters (limit "
                    f"{MAX_TEMPLATE_CHARS}); the model file is malformed or hostile: use a "
                    "trusted file or pass plain text prompts"
                )
            try:
                self._compiled = _sandbox().from_string(src)
            except jinja2.TemplateSyntaxError as e:
                raise ChatTemplateError(
                    f"{self.source}: the chat template is not valid Jinja (line {e.lineno}: "
                    f"{e.message}); fix the file's tokenizer.chat_template or pass plain text "
                    "prompts"
                ) from None
        return self._compiled

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool,
                limit: int) -> str:
        import jinja2
        from jinja2.sandbox import SecurityError

        tpl = self._template()
        what = None
        try:
            with _Guard(MAX_RENDER_SECONDS, MAX_RENDER_GROWTH_BYTES):
                parts, n = [], 0
                for chunk in tpl.generate(
                    messages=messages,
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.token_str(self.bos_id) if self.bos_id is not None else "",
                    eos_token=self.token_str(self.eos_id),
                ):
                    n += len(chunk)
                    if n > limit:
                        raise _RenderLimit(f"the rendered prompt exceeds {limit} characters")
                    parts.append(chunk)
            return "".join(parts)
        except SecurityError as e:
            what = f"tried an unsafe operation and was stopped ({e})"
        except _RenderLimit as e:
            what = f"was stopped: {e}"
        except RecursionError:
            what = "recursed too deeply"
        except jinja2.TemplateError as e:
            raise ChatTemplateError(
                f"{self.source}: the chat template rejected the messages: {e}"
            ) from None
        except Exception as e:  # the template's own code failed (TypeError, ...)
            raise ChatTemplateError(
                f"{self.source}: the chat template failed ({type(e).__name__}: {e}); check the "
                "messages, or pass plain text prompts"
            ) from None
        raise ChatTemplateError(
            f"{self.source}: the chat template {what}. Model files are untrusted: use a file "
            "from a trusted source, or pass plain text prompts instead of chat messages."
        )

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> ChatText:
        """Renders ``[{"role": ..., "content": ...}, ...]`` with the model's template.

        Returns a :class:`ChatText`: pass it (not a copy or a concatenation) to ``encode`` so
        that message content can never become control tokens.
        """
        if not self.chat_template:
            raise WeightsError(
                f"{self.source}: this tokenizer has no chat template; pass plain text prompts"
            )
        messages = check_messages(messages)
        limit = MAX_RENDER_CHARS + 4 * sum(
            len(v) for m in messages for v in m.values() if isinstance(v, str)
        )
        real = self._render(messages, add_generation_prompt, limit)
        # Render again with every untrusted string (content and any other text field, not
        # the role) replaced by a unique marker, to find where the template put it (markers
        # are private-use characters plus a random nonce).
        nonce = secrets.token_hex(8)
        values: list[str] = []
        marked_msgs = []
        for m in messages:
            mm = dict(m)
            for key, value in m.items():
                if key != "role" and isinstance(value, str):
                    mm[key] = f"\ue000{nonce}.{len(values)}\ue001"
                    values.append(value)
            marked_msgs.append(mm)
        marked = self._render(marked_msgs, add_generation_prompt, limit)
        pieces = re.split("(\ue000" + nonce + r"\.(\d+)\ue001)", marked)
        for transform in (lambda s: s, str.strip):
            segs: list[tuple[str, bool]] = []
            for k in range(0, len(pieces), 3):
                segs.append((pieces[k], True))
                if k + 2 < len(pieces):
                    segs.append((transform(values[int(pieces[k + 2])]), False))
            text = ChatText(segs)
            if str(text) == real:
                return text
        raise ChatTemplateError(
            f"{self.source}: the chat template changes message content in a way jaxlm cannot "
            "track, so it cannot keep control tokens out of the content; pass plain text "
            "prompts (encode(text, parse_special=False)) instead"
        )

    def encode_chat(self, messages: Sequence[dict[str, str]],
                    add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat: control tokens from the template, content as plain text."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt),
                           add_bos=False)


def build_bpe_tokenizer(
    tokens: Sequence[str],
    merges: Sequence[str],
    token_types: Sequence[int] | None = None,
    *,
    split_digits: bool = True,
):
    """A byte-level BPE ``tokenizers.Tokenizer`` from a GGUF-style vocab and merges."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = {t: i for i, t in enumerate(tokens)}
    merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = HFTokenizer(
        models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False)
    )
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if split_digits:
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.ByteLevel()
    if token_types is not None:
        specials = [AddedToken(tokens[i], special=True, normalized=False)
                    for i, t in enumerate(token_types) if int(t) == CONTROL]
        if specials:
            tok.add_special_tokens(specials)
    return tok


def tokenizer_from_gguf(path: str | os.PathLike) -> Tokenizer:
    """Rebuilds the tokenizer stored in a GGUF file's metadata."""
    from jaxlm.weights.gguf_io import _field, _reader

    r = _reader(path)
    model = _field(r, "tokenizer.ggml.model")
    if model is None:
        raise WeightsError(f"{path}: no tokenizer in the GGUF metadata (tokenizer.ggml.model).")
    if model != "gpt2":
        raise WeightsError(
            f"{path}: tokenizer model {model!r} is not supported (jaxlm rebuilds byte-level "
            "BPE, 'gpt2')."
        )
    def bad(key, what):
        return WeightsError(f"{path}: metadata {key} {what}; the file's tokenizer is malformed: "
                            "re-export the file.")

    tokens = _field(r, "tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise bad("tokenizer.ggml.tokens", "must be a non-empty list of strings")
    if len(set(tokens)) != len(tokens):
        raise bad("tokenizer.ggml.tokens", "lists a token twice")
    merges = _field(r, "tokenizer.ggml.merges") or []
    if not isinstance(merges, list) or not all(isinstance(m, str) and " " in m for m in merges):
        raise bad("tokenizer.ggml.merges", "must be a list of 'left right' strings")
    types = _field(r, "tokenizer.ggml.token_type")
    if types is not None and (not isinstance(types, list) or len(types) != len(tokens)):
        raise bad("tokenizer.ggml.token_type", f"must list one type per token ({len(tokens)})")
    pre = _field(r, "tokenizer.ggml.pre", "default")

    def token_id(key, default):
        v = _field(r, key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(tokens):
            raise bad(key, f"= {str(v)[:40]!r} is not a token id in [0, {len(tokens)})")
        return int(v)

    eos = token_id("tokenizer.ggml.eos_token_id", 0)
    bos = token_id("tokenizer.ggml.bos_token_id", None)
    pad = token_id("tokenizer.ggml.padding_token_id", eos)
    try:
        hf = build_bpe_tokenizer(tokens, merges, types, split_digits=pre in ("smollm", "default"))
    except Exception as e:  # tokenizers rejects merges of unknown tokens, ...
        raise WeightsError(f"{path}: the tokenizer cannot be rebuilt ({type(e).__name__}: "
                           f"{str(e)[:200]}); re-export the file.") from None
    stops = {eos}
    for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        i = hf.token_to_id(name)
        if i is not None:
            stops.add(i)
    return Tokenizer(
        hf=hf,
        eos_id=eos,
        bos_id=bos,
        pad_id=pad,
        chat_template=_field(r, "tokenizer.chat_template"),
        add_bos=bool(_field(r, "tokenizer.ggml.add_bos_token", False)),
        stop_ids=tuple(sorted(stops)),
        source=str(path),
    )


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as token ids: the one stand-in tokenizer for small random models.

    Byte ``b`` becomes id ``offset + b`` (wrapped into ``[offset, vocab_size)`` when the
    vocabulary is smaller than ``offset + 256``); ids below ``offset`` and at or above
    ``offset + 256`` are reserved for special tokens. The defaults are the tiny ``*_test``
    presets' (vocab 256, id 0 = EOS = padding, ids = bytes); ``jaxlm.train.data`` uses
    ``ByteTokenizer(vocab_size=257, eos_id=256, ...)`` (EOS after the bytes) and the
    Keyformer evaluation ``offset=3`` (ids 0..2 reserved, no EOS).

    Chats are rendered as ChatML text and encoded byte by byte, so a message can never
    produce a special id (``encode_chat`` = ``encode(apply_chat_template(...))``).
    """

    vocab_size: int = 256
    eos_id: int | None = 0
    pad_id: int = 0
    bos_id: int | None = None
    stop_ids: tuple[int, ...] = (0,)
    offset: int = 0
    name: str = "bytes"

    def __post_init__(self):
        if self.vocab_size <= self.offset:
            raise ValueError(f"ByteTokenizer: vocab_size={self.vocab_size} leaves no ids for "
                             f"bytes after offset={self.offset}; use vocab_size >= offset + 256")
        ids = [("eos_id", self.eos_id), ("pad_id", self.pad_id), ("bos_id", self.bos_id)]
        ids += [("stop_ids", i) for i in self.stop_ids]
        for what, i in ids:
            if i is not None and not 0 <= i < self.vocab_size:
                raise ValueError(f"ByteTokenizer: {what}={i} is outside the vocabulary "
                                 f"[0, {self.vocab_size}); pick an id below vocab_size")

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Ids of ``text``'s UTF-8 bytes (BOS first when ``add_bos`` and a BOS id is set)."""
        n = self.vocab_size - self.offset
        ids = [self.offset + b % n for b in text.encode("utf-8")]
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of the byte ids (invalid UTF-8 becomes U+FFFD); special ids are dropped
        (``skip_special``) or, for the tiny presets' id 0, kept as the byte they equal."""
        special = {i for i in (self.eos_id, self.pad_id, self.bos_id) if i is not None}
        out = []
        for i in map(int, ids):
            if skip_special and i in special:
                continue
            b = i - self.offset
            if 0 <= b < 256:
                out.append(b)
            elif not skip_special:
                out.append(i % 256)
        return bytes(out).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """ChatML as plain text (``<|im_start|>role\\ncontent<|im_end|>\\n`` per message)."""
        s = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return s + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def encode_chat(self, messages: Sequence[dict[str, str]],
                    add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))
