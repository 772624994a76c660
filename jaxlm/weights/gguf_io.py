"""Read llama-architecture GGUF files into jaxlm params (and write tiny ones for tests).

Built on the ``gguf`` package: ``GGUFReader`` parses the file (memory-mapped)
and ``gguf.quants.dequantize`` expands Q4_0/Q4_1/Q8_0/F16/F32 blocks.

Row order: llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` so
that RoPE rotates interleaved pairs (2i, 2i+1). We keep the raw rows and set
``rope_layout="interleaved"``, which is exact (no un-permutation needed).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from jaxlm.core.config import ModelConfig
from jaxlm.weights.errors import WeightsError

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")


def _reader(path: str | os.PathLike):
    import gguf

    path = pathlib.Path(path)
    if not path.exists():
        raise WeightsError(f"GGUF file not found: {path}. Check the path.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise WeightsError(f"{path} is not a GGUF file (magic {magic!r}, expected b'GGUF').")
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises many types on truncated input
        raise WeightsError(
            f"{path} is malformed or truncated ({type(e).__name__}: {e}); re-download or "
            "re-export the file."
        ) from None


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All scalar/string metadata of a GGUF file (token lists left out)."""
    r = _reader(path)
    out = {}
    for k, f in r.fields.items():
        if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in ("tokens", "merges", "token_type", "scores"):
            continue
        try:
            out[k] = f.contents()
        except Exception:  # pragma: no cover - exotic field types
            continue
    return out


def config_from_gguf(reader, path) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise WeightsError(
            f"{path}: architecture {arch!r} is not supported; jaxlm reads llama-architecture GGUF "
            "files (Llama, SmolLM2, Mistral-style)."
        )

    def need(key):
        v = _field(reader, f"llama.{key}")
        if v is None:
            raise WeightsError(f"{path}: metadata key llama.{key} is missing; the file is incomplete.")
        return v

    d = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv", n_heads))
    vocab = _field(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    return ModelConfig(
        vocab_size=int(vocab),
        d_model=d,
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=d // n_heads,
        d_ff=int(need("feed_forward_length")),
        max_seq_len=int(_field(reader, "llama.context_length", 2048)),
        norm="rms",
        norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        pos="rope",
        rope_layout="interleaved",
        rope_base=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        mlp="swiglu",
        tie_embeddings="output.weight" not in names,
    )


def _dequant(t, path) -> np.ndarray:
    import gguf

    name = t.tensor_type.name
    if name not in SUPPORTED_TYPES:
        raise WeightsError(
            f"{path}: tensor {t.name} has type {name}; supported: {', '.join(SUPPORTED_TYPES)}."
        )
    expected = int(np.prod([int(x) for x in t.shape]))
    try:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
    except Exception as e:
        raise WeightsError(f"{path}: tensor {t.name} cannot be decoded ({e}); file is corrupt.") from None
    if arr.size != expected:
        raise WeightsError(
            f"{path}: tensor {t.name} holds {arr.size} values, expected {expected}; the file is "
            "truncated or corrupt."
        )
    # GGUF shapes list the fastest axis first; numpy wants (rows, cols) = (out, in).
    return arr.reshape([int(x) for x in reversed(t.shape)]).astype(np.float32)


def load_gguf(
    path: str | os.PathLike, dtype: str = "float32", compute_dtype: str | None = None
) -> tuple[ModelConfig, dict[str, Any]]:
    """Loads a llama-architecture GGUF file.

    Args:
        path: the .gguf file.
        dtype: parameter dtype ("float32" or "bfloat16").
        compute_dtype: activation dtype (default: same as ``dtype``).

    Returns:
        (config, params) with params as numpy arrays in jaxlm's layout
        (``jax.device_put`` them, or pass directly to jitted functions).

    Raises:
        WeightsError: missing/malformed/truncated file, wrong architecture,
            missing tensors or unsupported quantization.
    """
    import dataclasses

    r = _reader(path)
    cfg = config_from_gguf(r, path)
    cfg = dataclasses.replace(cfg, param_dtype=dtype, compute_dtype=compute_dtype or dtype)
    tensors = {t.name: t for t in r.tensors}
    np_dtype = np.dtype("float32") if dtype == "float32" else None

    def get(name):
        if name not in tensors:
            raise WeightsError(f"{path}: tensor {name} is missing; the file is incomplete.")
        a = _dequant(tensors[name], path)
        return a if np_dtype is not None else _cast(a, dtype)

    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    params: dict[str, Any] = {"embed": get("token_embd.weight")}
    if params["embed"].shape != (cfg.vocab_size, d):
        raise WeightsError(
            f"{path}: token_embd.weight has shape {params['embed'].shape}, expected "
            f"{(cfg.vocab_size, d)} from the metadata."
        )
    layer_list = []
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        layer_list.append(
            {
                "attn_norm": {"scale": get(b + "attn_norm.weight")},
                "mlp_norm": {"scale": get(b + "ffn_norm.weight")},
                "attn": {
                    "wq": get(b + "attn_q.weight").T.reshape(d, h, hd),
                    "wk": get(b + "attn_k.weight").T.reshape(d, kv, hd),
                    "wv": get(b + "attn_v.weight").T.reshape(d, kv, hd),
                    "wo": get(b + "attn_output.weight").T.reshape(h, hd, d),
                },
                "mlp": {
                    "w_gate": np.ascontiguousarray(get(b + "ffn_gate.weight").T),
                    "w_up": np.ascontiguousarray(get(b + "ffn_up.weight").T),
                    "w_down": np.ascontiguousarray(get(b + "ffn_down.weight").T),
                },
            }
        )
    params["layers"] = layer_list
    params["final_norm"] = {"scale": get("output_norm.weight")}
    if not cfg.tie_embeddings:
        params["lm_head"] = np.ascontiguousarray(get("output.weight").T)
    for lp in layer_list:
        for k in ("wq", "wk", "wv", "wo"):
            lp["attn"][k] = np.ascontiguousarray(lp["attn"][k])
    return cfg, params


def _cast(a: np.ndarray, dtype: str):
    import jax.numpy as jnp

    return np.asarray(a, dtype=jnp.dtype(dtype))


def write_llama_gguf(
    path: str | os.PathLike,
    cfg: ModelConfig,
    params: dict[str, Any],
    *,
    qtype: str = "F32",
    tokens: list[str] | None = None,
    merges: list[str] | None = None,
    token_types: list[int] | None = None,
    chat_template: str | None = None,
    eos_token_id: int = 0,
) -> pathlib.Path:
    """Writes jaxlm llama params as a GGUF file (used by tests to make tiny files).

    ``params`` must use the interleaved RoPE row order (as ``load_gguf`` returns).
    ``qtype`` applies to 2-D weight matrices: F32, F16, Q8_0, Q4_0 or Q4_1 (norms stay F32).
    """
    import gguf

    path = pathlib.Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if tokens is not None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_merges(merges or [])
        w.add_token_types(token_types or [1] * len(tokens))
        w.add_eos_token_id(eos_token_id)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    qt = getattr(gguf.GGMLQuantizationType, qtype)

    def add(name, arr, quantize=True):
        arr = np.ascontiguousarray(np.asarray(arr, np.float32))
        if quantize and arr.ndim == 2 and qtype != "F32":
            if qtype == "F16":
                w.add_tensor(name, arr.astype(np.float16))
            else:
                data = gguf.quants.quantize(arr, qt)
                w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
        else:
            w.add_tensor(name, arr)

    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    add("token_embd.weight", params["embed"])
    for i, lp in enumerate(params["layers"]):
        b = f"blk.{i}."
        add(b + "attn_norm.weight", lp["attn_norm"]["scale"], False)
        add(b + "ffn_norm.weight", lp["mlp_norm"]["scale"], False)
        add(b + "attn_q.weight", np.asarray(lp["attn"]["wq"]).reshape(d, h * hd).T)
        add(b + "attn_k.weight", np.asarray(lp["attn"]["wk"]).reshape(d, kv * hd).T)
        add(b + "attn_v.weight", np.asarray(lp["attn"]["wv"]).reshape(d, kv * hd).T)
        add(b + "attn_output.weight", np.asarray(lp["attn"]["wo"]).reshape(h * hd, d).T)
        add(b + "ffn_gate.weight", np.asarray(lp["mlp"]["w_gate"]).T)
        add(b + "ffn_up.weight", np.asarray(lp["mlp"]["w_up"]).T)
        add(b + "ffn_down.weight", np.asarray(lp["mlp"]["w_down"]).T)
    add("output_norm.weight", params["final_norm"]["scale"], False)
    if not cfg.tie_embeddings:
        add("output.weight", np.asarray(params["lm_head"]).T)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
