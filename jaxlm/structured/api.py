"""``generate(..., constraint=...)``: core's generation loop with per-row token automata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from jaxlm.core.config import ModelConfig
from jaxlm.core.generate import GenerateOutput, SamplingConfig
from jaxlm.core.generate import generate as core_generate
from jaxlm.structured.automaton import TokenVocab
from jaxlm.structured.processor import StructuredProcessor, make_processor


_VOCABS: dict[int, tuple[Any, TokenVocab]] = {}


def vocab_of(tokenizer: Any) -> TokenVocab:
    """The ``TokenVocab`` of a ``jaxlm.weights`` tokenizer (memoised per tokenizer object)."""
    if isinstance(tokenizer, TokenVocab):
        return tokenizer
    hit = _VOCABS.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    v = TokenVocab.from_tokenizer(tokenizer)
    if len(_VOCABS) >= 8:
        _VOCABS.pop(next(iter(_VOCABS)))
    _VOCABS[id(tokenizer)] = (tokenizer, v)  # holds the object, so its id stays unique
    return v


def processor_for(constraint: Any, n_rows: int, tokenizer: Any, vocab_size: int,
                  cache_dir: Any = None) -> StructuredProcessor:
    """One constraint for every row, or a list with one constraint (or None) per row."""
    if isinstance(constraint, list | tuple):
        if len(constraint) != n_rows:
            raise ValueError(f"constraint list has {len(constraint)} entries for {n_rows} "
                             "prompts; give one per prompt (None = unconstrained)")
        cons = list(constraint)
    else:
        cons = [constraint] * n_rows
    return make_processor(cons, vocab_of(tokenizer), vocab_size, cache_dir=cache_dir)


def generate(
    params: Any,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    constraint: Any,
    tokenizer: Any,
    max_new_tokens: int,
    key: jax.Array | None = None,
    sampling: SamplingConfig = SamplingConfig(),
    pad_id: int = 0,
    bucket: int = 16,
    cache_dir: Any = None,
) -> GenerateOutput:
    """``jaxlm.core.generate`` with ``constraint`` (Regex / JsonSchema / Choice / a
    dataclass or TypedDict type, or a per-row list with None for free rows) enforced inside
    the jitted loop. Rows stop on the tokenizer's stop ids (allowed only where the
    constraint accepts) or when the constraint allows nothing more.

    Args:
        tokenizer: a ``jaxlm.weights`` Tokenizer (or a ``TokenVocab``).
        cache_dir: compiled-automaton disk cache (None: default folder, False: off).
    """
    proc = processor_for(constraint, len(prompts), tokenizer, cfg.vocab_size, cache_dir)
    vocab = vocab_of(tokenizer)
    return core_generate(params, cfg, prompts, max_new_tokens=max_new_tokens, key=key,
                         sampling=sampling, stop_ids=vocab.stop_ids, pad_id=pad_id,
                         bucket=bucket, processor=proc)
