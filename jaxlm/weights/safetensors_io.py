"""Load HF ``safetensors`` checkpoints of Llama, GPT-2 and GPT-J models into jaxlm params.

A checkpoint folder holds ``config.json`` and ``model.safetensors`` (or sharded
``model-0000x-of-0000y.safetensors`` files). Weight names follow the HF
transformers conventions of each family. HF Llama stores q/k rows in the
half-split RoPE order, so its config gets ``rope_layout="half"``; GPT-J rotates
interleaved pairs over ``rotary_dim`` dims.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from jaxlm.core.config import ConfigError, ModelConfig
from jaxlm.weights.errors import WeightsError
from jaxlm.weights.validate import check_shapes


def _read_tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(
            f"{folder}: no *.safetensors file found; point to an HF checkpoint folder."
        )
    out: dict[str, np.ndarray] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except Exception as e:
            raise WeightsError(
                f"{f}: cannot read safetensors ({e}); the file is corrupt."
            ) from None
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _rope_theta(hf: dict[str, Any]) -> float:
    """RoPE base: top-level ``rope_theta`` (transformers < 5) or ``rope_parameters``."""
    if "rope_theta" in hf:
        return float(hf["rope_theta"])
    rp = hf.get("rope_parameters") or {}
    if rp.get("rope_type", "default") not in ("default", None):
        raise WeightsError(f"RoPE scaling {rp.get('rope_type')!r} is not supported yet")
    return float(rp.get("rope_theta", 10000.0))


MAX_CONFIG_BYTES = 1 << 20
# Keys each model_type needs (all positive integers) and optional keys with their types.
_REQUIRED = {
    "llama": ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
              "vocab_size"),
    "gpt2": ("n_embd", "n_head", "n_layer", "vocab_size", "n_positions"),
    "gptj": ("n_embd", "n_head", "n_layer", "vocab_size", "n_positions"),
}
_REQUIRED["mistral"] = _REQUIRED["qwen2"] = _REQUIRED["llama"]
_OPTIONAL_INT = ("num_key_value_heads", "head_dim", "max_position_embeddings", "n_inner",
                 "rotary_dim")
_OPTIONAL_FLOAT = ("rms_norm_eps", "layer_norm_epsilon", "rope_theta")


def check_hf_config(hf: Any, where) -> dict[str, Any]:
    """``config.json`` contents checked for the keys and types the loader reads."""
    if not isinstance(hf, dict):
        raise WeightsError(f"{where}: config.json must hold a JSON object, got "
                           f"{type(hf).__name__}; fix or re-export config.json.")
    mt = hf.get("model_type")
    if mt not in _REQUIRED:
        raise WeightsError(
            f"{where}: model_type {mt!r} is not supported; jaxlm loads llama/mistral/qwen2, gpt2 "
            "and gptj safetensors checkpoints (set model_type in config.json)."
        )

    def bad(key, want):
        v = hf[key]
        raise WeightsError(f"{where}: config.json key {key!r} must be {want}, got {v!r} "
                           f"({type(v).__name__}); fix config.json.")

    for key in _REQUIRED[mt]:
        if key not in hf:
            raise WeightsError(
                f"{where}: config.json has no {key!r} (model_type {mt!r} needs "
                f"{', '.join(_REQUIRED[mt])}); fix or re-export config.json."
            )
    for key in (*_REQUIRED[mt], *_OPTIONAL_INT):
        v = hf.get(key)
        if key in _REQUIRED[mt] or v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 1 << 24:
                bad(key, "a positive integer")
    for key in _OPTIONAL_FLOAT:
        v = hf.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not 0 < v < 1e12):
            bad(key, "a positive number")
    if "tie_word_embeddings" in hf and not isinstance(hf["tie_word_embeddings"], bool):
        bad("tie_word_embeddings", "true or false")
    if "rope_parameters" in hf and not isinstance(hf["rope_parameters"] or {}, dict):
        bad("rope_parameters", "an object")
    d, h = (hf["hidden_size"], hf["num_attention_heads"]) if mt in ("llama", "mistral", "qwen2") \
        else (hf["n_embd"], hf["n_head"])
    if d % h and not hf.get("head_dim"):
        raise WeightsError(f"{where}: the number of heads {h} does not divide the width {d} in "
                           "config.json (and no head_dim is given); fix config.json.")
    return hf


def read_hf_config(folder: pathlib.Path) -> dict[str, Any]:
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise WeightsError(f"{folder}: config.json is missing; an HF checkpoint folder needs it.")
    if cfg_file.stat().st_size > MAX_CONFIG_BYTES:
        raise WeightsError(f"{cfg_file} is larger than {MAX_CONFIG_BYTES >> 20} MiB; it is not a "
                           "model config: fix or re-export it.")
    try:
        hf = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise WeightsError(f"{cfg_file} is not UTF-8 text ({e.reason} at byte {e.start}); fix "
                           "or re-export config.json.") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{cfg_file} is not valid JSON ({e.msg} at line {e.lineno}, column "
                           f"{e.colno}); fix or re-export config.json.") from None
    except RecursionError:
        raise WeightsError(f"{cfg_file} nests too deeply to be a model config; fix it.") from None
    return check_hf_config(hf, cfg_file)


def config_from_hf(hf: dict[str, Any], path) -> ModelConfig:
    mt = hf.get("model_type")
    if mt in ("llama", "mistral", "qwen2"):
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        return ModelConfig(
            vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"], n_heads=h,
            n_kv_heads=hf.get("num_key_value_heads", h), head_dim=hf.get("head_dim") or d // h,
            d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
            norm="rms", norm_eps=hf.get("rms_norm_eps", 1e-6), pos="rope", rope_layout="half",
            rope_base=_rope_theta(hf), mlp="swiglu",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    if mt == "gpt2":
        d, h = hf["n_embd"], hf["n_head"]
        return ModelConfig(
            vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=h,
            n_kv_heads=h, head_dim=d // h, d_ff=hf.get("n_inner") or 4 * d,
            max_seq_len=hf["n_positions"], norm="layer",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), pos="learned", mlp="gelu",
            tie_embeddings=True, use_bias=True,
        )
    if mt == "gptj":
        d, h = hf["n_embd"], hf["n_head"]
        return ModelConfig(
            vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=h,
            n_kv_heads=h, head_dim=d // h, d_ff=hf.get("n_inner") or 4 * d,
            max_seq_len=hf["n_positions"], norm="layer",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), pos="rope", rope_layout="interleaved",
            rotary_dim=hf.get("rotary_dim"), rope_base=10000.0, mlp="gelu", parallel_block=True,
            tie_embeddings=False, use_bias=True,
        )
    raise WeightsError(
        f"{path}: model_type {mt!r} is not supported; jaxlm loads llama/mistral, gpt2 and gptj "
        "safetensors checkpoints."
    )


def load_safetensors(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """Loads an HF checkpoint folder (config.json + *.safetensors) into (config, params)."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise WeightsError(f"checkpoint folder not found: {folder}")
    hf = read_hf_config(folder)
    try:
        cfg = config_from_hf(hf, folder)
    except ConfigError as e:
        raise WeightsError(
            f"{folder}/config.json describes an invalid model ({e}); fix it."
        ) from None
    w = _read_tensors(folder)
    mt = hf["model_type"]
    try:
        if mt == "gpt2":
            params = _gpt2(w, cfg)
        elif mt == "gptj":
            params = _gptj(w, cfg)
        else:
            params = _llama(w, cfg)
    except KeyError as e:
        raise WeightsError(
            f"{folder}: tensor {e} is missing; the checkpoint is incomplete."
        ) from None
    except ValueError as e:  # a reshape that the tensor sizes do not allow
        raise WeightsError(
            f"{folder}: the tensors do not match config.json ({e}); the config's sizes "
            "(hidden size, heads, layers, vocab) and the weights disagree: fix config.json or "
            "re-export the checkpoint."
        ) from None
    check_shapes(params, cfg, folder)
    return cfg, params


def _strip(w: dict[str, np.ndarray], prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in w.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def _llama(w, cfg: ModelConfig):
    w = _strip(w, ("model.",))
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    layers = []
    for i in range(cfg.n_layers):
        b = f"layers.{i}."
        layers.append({
            "attn_norm": {"scale": w[b + "input_layernorm.weight"]},
            "mlp_norm": {"scale": w[b + "post_attention_layernorm.weight"]},
            "attn": {
                "wq": w[b + "self_attn.q_proj.weight"].T.reshape(d, h, hd),
                "wk": w[b + "self_attn.k_proj.weight"].T.reshape(d, kv, hd),
                "wv": w[b + "self_attn.v_proj.weight"].T.reshape(d, kv, hd),
                "wo": w[b + "self_attn.o_proj.weight"].T.reshape(h, hd, d),
            },
            "mlp": {
                "w_gate": w[b + "mlp.gate_proj.weight"].T,
                "w_up": w[b + "mlp.up_proj.weight"].T,
                "w_down": w[b + "mlp.down_proj.weight"].T,
            },
        })
    params = {"embed": w["embed_tokens.weight"], "layers": layers,
              "final_norm": {"scale": w["norm.weight"]}}
    if not cfg.tie_embeddings:
        params["lm_head"] = w["lm_head.weight"].T
    return _contig(params)


def _gpt2(w, cfg: ModelConfig):
    w = _strip(w, ("transformer.",))
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    layers = []
    for i in range(cfg.n_layers):
        b = f"h.{i}."
        qkv_w = w[b + "attn.c_attn.weight"]  # Conv1D: [D, 3D]
        qkv_b = w[b + "attn.c_attn.bias"]
        wq, wk, wv = np.split(qkv_w, 3, axis=1)
        bq, bk, bv = np.split(qkv_b, 3)
        layers.append({
            "attn_norm": {"scale": w[b + "ln_1.weight"], "bias": w[b + "ln_1.bias"]},
            "mlp_norm": {"scale": w[b + "ln_2.weight"], "bias": w[b + "ln_2.bias"]},
            "attn": {
                "wq": wq.reshape(d, h, hd), "wk": wk.reshape(d, h, hd), "wv": wv.reshape(d, h, hd),
                "wo": w[b + "attn.c_proj.weight"].reshape(h, hd, d),
                "bq": bq.reshape(h, hd), "bk": bk.reshape(h, hd), "bv": bv.reshape(h, hd),
                "bo": w[b + "attn.c_proj.bias"],
            },
            "mlp": {
                "w_up": w[b + "mlp.c_fc.weight"], "b_up": w[b + "mlp.c_fc.bias"],
                "w_down": w[b + "mlp.c_proj.weight"], "b_down": w[b + "mlp.c_proj.bias"],
            },
        })
    return _contig({
        "embed": w["wte.weight"], "pos_embed": w["wpe.weight"], "layers": layers,
        "final_norm": {"scale": w["ln_f.weight"], "bias": w["ln_f.bias"]},
    })


def _gptj(w, cfg: ModelConfig):
    lm_w, lm_b = w["lm_head.weight"], w.get("lm_head.bias")
    w = _strip(w, ("transformer.",))
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    layers = []
    for i in range(cfg.n_layers):
        b = f"h.{i}."
        zeros = np.zeros((h, hd), np.float32)
        layers.append({
            "attn_norm": {"scale": w[b + "ln_1.weight"], "bias": w[b + "ln_1.bias"]},
            "attn": {
                "wq": w[b + "attn.q_proj.weight"].T.reshape(d, h, hd),
                "wk": w[b + "attn.k_proj.weight"].T.reshape(d, h, hd),
                "wv": w[b + "attn.v_proj.weight"].T.reshape(d, h, hd),
                "wo": w[b + "attn.out_proj.weight"].T.reshape(h, hd, d),
                "bq": zeros, "bk": zeros, "bv": zeros, "bo": np.zeros((d,), np.float32),
            },
            "mlp": {
                "w_up": w[b + "mlp.fc_in.weight"].T, "b_up": w[b + "mlp.fc_in.bias"],
                "w_down": w[b + "mlp.fc_out.weight"].T, "b_down": w[b + "mlp.fc_out.bias"],
            },
        })
    params = {
        "embed": w["wte.weight"], "layers": layers,
        "final_norm": {"scale": w["ln_f.weight"], "bias": w["ln_f.bias"]},
        "lm_head": lm_w.T,
    }
    params["lm_head_bias"] = lm_b if lm_b is not None else np.zeros((cfg.vocab_size,), np.float32)
    return _contig(params)


def _contig(tree):
    import jax

    return jax.tree.map(lambda a: np.ascontiguousarray(a, np.float32), tree)
