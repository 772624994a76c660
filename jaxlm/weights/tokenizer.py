"""Byte-level BPE tokenizer rebuilt from GGUF metadata with ``tokenizers``, plus chat templates.

The GGUF stores the vocabulary (``tokenizer.ggml.tokens``), the merges, token
types (3 = control/special) and a Jinja chat template. SmolLM2's pre-tokenizer
(llama.cpp's "smollm") splits digits individually, then applies the GPT-2
byte-level regex; we rebuild exactly that.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from jaxlm.weights.errors import WeightsError

CONTROL = 3


@dataclasses.dataclass
class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the special ids and chat template of a model.

    Attributes:
        hf: the underlying ``tokenizers.Tokenizer``.
        eos_id: end-of-sequence id (generation stops on it).
        bos_id: beginning-of-sequence id or None.
        pad_id: padding id.
        chat_template: Jinja template string or None.
        add_bos: prepend ``bos_id`` when encoding.
        stop_ids: ids that end an assistant turn (eos, <|im_end|>, ...).
    """

    hf: Any
    eos_id: int
    bos_id: int | None = None
    pad_id: int = 0
    chat_template: str | None = None
    add_bos: bool = False
    stop_ids: tuple[int, ...] = ()

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(map(int, ids)), skip_special_tokens=skip_special)

    def token_str(self, i: int) -> str:
        return self.hf.decode([int(i)], skip_special_tokens=False)

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Renders ``[{"role": ..., "content": ...}, ...]`` with the model's template."""
        if not self.chat_template:
            raise WeightsError("this tokenizer has no chat template; pass plain text prompts")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"chat message {m!r} must be a dict with 'role' and 'content'")
        import jinja2

        env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
        tpl = env.from_string(self.chat_template)
        return tpl.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.token_str(self.bos_id) if self.bos_id is not None else "",
            eos_token=self.token_str(self.eos_id),
        )

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self.encode(self.apply_chat_template(messages), add_bos=False)


def build_bpe_tokenizer(
    tokens: Sequence[str],
    merges: Sequence[str],
    token_types: Sequence[int] | None = None,
    *,
    split_digits: bool = True,
):
    """A byte-level BPE ``tokenizers.Tokenizer`` from a GGUF-style vocab and merges."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False))
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
            f"{path}: tokenizer model {model!r} is not supported (jaxlm rebuilds byte-level BPE, 'gpt2')."
        )
    tokens = _field(r, "tokenizer.ggml.tokens")
    merges = _field(r, "tokenizer.ggml.merges") or []
    types = _field(r, "tokenizer.ggml.token_type")
    pre = _field(r, "tokenizer.ggml.pre", "default")
    hf = build_bpe_tokenizer(tokens, merges, types, split_digits=pre in ("smollm", "default"))
    eos = int(_field(r, "tokenizer.ggml.eos_token_id", 0))
    bos = _field(r, "tokenizer.ggml.bos_token_id")
    pad = int(_field(r, "tokenizer.ggml.padding_token_id", eos))
    stops = {eos}
    for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        i = hf.token_to_id(name)
        if i is not None:
            stops.add(i)
    return Tokenizer(
        hf=hf,
        eos_id=eos,
        bos_id=None if bos is None else int(bos),
        pad_id=pad,
        chat_template=_field(r, "tokenizer.chat_template"),
        add_bos=bool(_field(r, "tokenizer.ggml.add_bos_token", False)),
        stop_ids=tuple(sorted(stops)),
    )
