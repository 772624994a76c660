"""Helpers that write small (and hostile) model files for the robustness tests."""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any

import numpy as np

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def tiny_vocab() -> tuple[list[str], list[str], list[int]]:
    """A byte-level BPE trained on a few sentences, plus ChatML control tokens (type 3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["the quick brown fox jumps over the lazy dog", "hello world, system user 123"] * 20
    tok.train_from_iterator(text, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t.startswith("<|") else 1 for t in tokens]
    return tokens, merges, types


def tiny_cfg(**overrides):
    from jaxlm.core import MODELS

    tokens, _, _ = tiny_vocab()
    base = dict(
        vocab_size=len(tokens),
        rope_layout="interleaved",
        d_model=32,
        head_dim=16,
        n_heads=2,
        n_kv_heads=1,
        n_layers=2,
        d_ff=48,
        max_seq_len=64,
    )
    base.update(overrides)
    return dataclasses.replace(MODELS.get("smollm2-135m_test"), **base)


def llama_meta(cfg, chat_template: str | None = CHATML) -> dict[str, Any]:
    """GGUF metadata of a llama file for ``cfg`` with the tiny vocab (key -> value)."""
    tokens, merges, types = tiny_vocab()
    meta: dict[str, Any] = {
        "llama.block_count": cfg.n_layers,
        "llama.context_length": cfg.max_seq_len,
        "llama.embedding_length": cfg.d_model,
        "llama.feed_forward_length": cfg.d_ff,
        "llama.attention.head_count": cfg.n_heads,
        "llama.attention.head_count_kv": cfg.n_kv_heads,
        "llama.rope.freq_base": float(cfg.rope_base),
        "llama.attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.eos_token_id": tokens.index("<|im_end|>"),
    }
    if chat_template is not None:
        meta["tokenizer.chat_template"] = chat_template
    return meta


def llama_tensors(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """GGUF-layout (numpy row-major, [out, in]) float32 tensors of a random llama model."""
    rng = np.random.default_rng(seed)
    d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    out = {"token_embd.weight": w(cfg.vocab_size, d), "output_norm.weight": np.ones(d, np.float32)}
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        out.update(
            {
                b + "attn_norm.weight": np.ones(d, np.float32),
                b + "ffn_norm.weight": np.ones(d, np.float32),
                b + "attn_q.weight": w(h * hd, d),
                b + "attn_k.weight": w(kv * hd, d),
                b + "attn_v.weight": w(kv * hd, d),
                b + "attn_output.weight": w(d, h * hd),
                b + "ffn_gate.weight": w(f, d),
                b + "ffn_up.weight": w(f, d),
                b + "ffn_down.weight": w(d, f),
            }
        )
    return out


def write_gguf(path, meta: dict[str, Any], tensors: dict[str, np.ndarray], arch: str = "llama"):
    """Writes a GGUF file with exactly the given metadata and tensors (no checks)."""
    import gguf

    path = pathlib.Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in meta.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, list(v))
    for name, arr in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_gguf(path, cfg=None, chat_template: str | None = CHATML, **meta_overrides):
    cfg = cfg or tiny_cfg()
    meta = llama_meta(cfg, chat_template)
    meta.update(meta_overrides)
    return write_gguf(path, meta, llama_tensors(cfg))
