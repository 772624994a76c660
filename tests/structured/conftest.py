"""Fixtures: the real SmolLM2 tokenizer vocabulary and a tiny random model over it."""

import dataclasses

import jax
import pytest

from jaxlm.core import MODELS, init
from jaxlm.structured import TokenVocab


@pytest.fixture(scope="session")
def tokenizer():
    from jaxlm.weights.registry import locate
    from jaxlm.weights.tokenizer import tokenizer_from_gguf

    try:
        path = locate("smollm2-135m-instruct")
    except Exception as e:  # noqa: BLE001 - the package is part of the test install
        pytest.fail(f"SmolLM2 tokenizer unavailable: {e}")
    return tokenizer_from_gguf(path)


@pytest.fixture(scope="session")
def vocab(tokenizer):
    return TokenVocab.from_tokenizer(tokenizer)


@pytest.fixture(scope="session")
def model(vocab):
    """The tiny test Transformer with SmolLM2's vocabulary size (random weights, fast)."""
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), vocab_size=vocab.size,
                              max_seq_len=512)
    return cfg, init(jax.random.PRNGKey(0), cfg)
