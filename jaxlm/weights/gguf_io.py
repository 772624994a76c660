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


# Limits on what a GGUF header may declare (checked before the gguf reader parses it; the
# largest real vocabularies have ~260k tokens and merges).
MAX_TENSORS = 65_536
MAX_KV = 65_536
MAX_KEY_BYTES = 1024
MAX_STRING_BYTES = 1 << 20
MAX_ARRAY_LEN = 1 << 21
MAX_DIMS = 4  # GGML_MAX_DIMS
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _scan_header(path: pathlib.Path) -> None:
    """Walks the GGUF key/value section and refuses absurd counts and sizes with one error.

    The ``gguf`` reader materializes every array element; a hostile header declaring 2^40
    strings or a 4 GiB key would exhaust memory or time before it noticed anything.
    """
    import mmap
    import struct

    size = path.stat().st_size
    if size < 24:
        raise WeightsError(f"{path} is truncated ({size} bytes, a GGUF header needs 24); "
                           "re-download or re-export the file.")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        version = struct.unpack_from("<I", m, 4)[0]
        end = "<" if version < 0x10000 else ">"
        version = struct.unpack_from(end + "I", m, 4)[0]
        if version not in (2, 3):
            raise WeightsError(f"{path}: GGUF version {version} is not supported (2 or 3); "
                               "re-export the file with a current llama.cpp converter.")
        n_tensors, n_kv = struct.unpack_from(end + "QQ", m, 8)
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise WeightsError(
                f"{path}: the header declares {n_tensors} tensors and {n_kv} metadata keys "
                f"(limits {MAX_TENSORS} and {MAX_KV}); the file is corrupt or hostile."
            )
        pos = 24

        def take(fmt):
            nonlocal pos
            n = struct.calcsize(fmt)
            if pos + n > size:
                raise WeightsError(f"{path} is truncated inside its metadata; re-download or "
                                   "re-export the file.")
            vals = struct.unpack_from(end + fmt, m, pos)
            pos += n
            return vals[0] if len(vals) == 1 else vals

        def skip_string(what, limit=MAX_STRING_BYTES):
            nonlocal pos
            n = take("Q")
            if n > limit:
                raise WeightsError(f"{path}: metadata {what} holds a string of {n} bytes (limit "
                                   f"{limit}); the file is corrupt or hostile.")
            if pos + n > size:
                raise WeightsError(f"{path} is truncated inside its metadata; re-download or "
                                   "re-export the file.")
            start = pos
            pos += n
            return start, n

        def skip_value(vtype, key, depth=0):
            nonlocal pos
            if vtype == _STRING:
                skip_string(key)
            elif vtype == _ARRAY:
                etype, count = take("I"), take("Q")
                if count > MAX_ARRAY_LEN or depth > 1:
                    raise WeightsError(
                        f"{path}: metadata {key} is an array of {count} items (limit "
                        f"{MAX_ARRAY_LEN}, nesting 2); the file is corrupt or hostile."
                    )
                if etype in _SCALAR_BYTES:
                    pos += count * _SCALAR_BYTES[etype]
                    if pos > size:
                        raise WeightsError(f"{path} is truncated inside metadata {key}; "
                                           "re-download or re-export the file.")
                else:
                    for _ in range(count):
                        skip_value(etype, key, depth + 1)
            elif vtype in _SCALAR_BYTES:
                take(f"{_SCALAR_BYTES[vtype]}s")
            else:
                raise WeightsError(f"{path}: metadata {key} has unknown type {vtype}; the file "
                                   "is corrupt.")

        for _ in range(n_kv):
            start, n = skip_string("key", MAX_KEY_BYTES)
            key = bytes(m[start:start + n]).decode("utf-8", "replace")
            skip_value(take("I"), key)
        for _ in range(n_tensors):
            start, n = skip_string("tensor name", MAX_KEY_BYTES)
            name = bytes(m[start:start + n]).decode("utf-8", "replace")
            n_dims = take("I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise WeightsError(f"{path}: tensor {name} declares {n_dims} dimensions (1 to "
                                   f"{MAX_DIMS} allowed); the file is corrupt or hostile.")
            dims = [take("Q") for _ in range(n_dims)]
            if any(x > size * 4 for x in dims) or int(np.prod(dims, dtype=np.float64)) > size * 4:
                raise WeightsError(f"{path}: tensor {name} declares shape {dims}, more values "
                                   f"than a {size}-byte file can hold; the file is corrupt or "
                                   "truncated.")
            take("I")  # type
            take("Q")  # offset


def _reader(path: str | os.PathLike):
    import gguf

    path = pathlib.Path(path)
    if not path.exists():
        raise WeightsError(f"GGUF file not found: {path}. Check the path.")
    if not path.is_file():
        raise WeightsError(f"{path} is not a file; pass the path of a .gguf file.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise WeightsError(f"{path} is not a GGUF file (magic {magic!r}, expected b'GGUF').")
    _scan_header(path)
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
        lists = ("tokens", "merges", "token_type", "scores")
        if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in lists:
            continue
        try:
            out[k] = f.contents()
        except Exception:  # pragma: no cover - exotic field types
            continue
    return out


def _meta_int(reader, path, key, default=None, lo=1, hi=1 << 24):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise WeightsError(f"{path}: metadata key {key} is missing; the file is incomplete.")
        return default
    try:
        v = f.contents()
    except Exception:
        v = None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise WeightsError(
            f"{path}: metadata {key} = {str(v)[:60]!r} must be one integer in [{lo}, {hi}]; the "
            "file's metadata is malformed (per-layer values are not supported): re-export it."
        )
    return int(v)


def _meta_float(reader, path, key, default, lo, hi):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        v = float(f.contents())
    except Exception:
        v = float("nan")
    if not lo < v < hi:  # also refuses NaN
        raise WeightsError(f"{path}: metadata {key} = {v} must lie in ({lo}, {hi}); the file's "
                           "metadata is malformed: re-export it.")
    return v


def config_from_gguf(reader, path) -> ModelConfig:
    """The model config from the metadata, checked for types, ranges and consistency."""
    from jaxlm.core.config import ConfigError

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise WeightsError(
            f"{path}: architecture {arch!r} is not supported; jaxlm reads llama-architecture GGUF "
            "files (Llama, SmolLM2, Mistral-style)."
        )
    d = _meta_int(reader, path, "llama.embedding_length", hi=1 << 16)
    n_layers = _meta_int(reader, path, "llama.block_count", hi=1024)
    n_heads = _meta_int(reader, path, "llama.attention.head_count", hi=1024)
    n_kv = _meta_int(reader, path, "llama.attention.head_count_kv", n_heads, hi=1024)
    d_ff = _meta_int(reader, path, "llama.feed_forward_length", hi=1 << 20)
    ctx = _meta_int(reader, path, "llama.context_length", 2048, hi=1 << 24)
    if "llama.attention.key_length" in reader.fields:
        hd = _meta_int(reader, path, "llama.attention.key_length", hi=4096)
        vd = _meta_int(reader, path, "llama.attention.value_length", hd, hi=4096)
        if vd != hd:
            raise WeightsError(f"{path}: attention key_length {hd} != value_length {vd} is not "
                               "supported by jaxlm.")
    else:
        if d % n_heads:
            raise WeightsError(
                f"{path}: llama.attention.head_count = {n_heads} does not divide "
                f"llama.embedding_length = {d}, so the head size is undefined; the file's "
                "metadata is wrong: re-export it (or add llama.attention.key_length)."
            )
        hd = d // n_heads
    if n_heads % n_kv:
        raise WeightsError(
            f"{path}: llama.attention.head_count_kv = {n_kv} does not divide head_count = "
            f"{n_heads}; the file's metadata is wrong: re-export it."
        )
    if "llama.vocab_size" in reader.fields:
        vocab = _meta_int(reader, path, "llama.vocab_size", hi=1 << 22)
    elif "tokenizer.ggml.tokens" in reader.fields:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    else:
        tok_embd = [t for t in reader.tensors if t.name == "token_embd.weight"]
        if not tok_embd:
            raise WeightsError(f"{path}: no llama.vocab_size, tokenizer or token_embd.weight; "
                               "the file is incomplete.")
        vocab = int(tok_embd[0].shape[-1])
    names = {t.name for t in reader.tensors}
    try:
        return ModelConfig(
            vocab_size=int(vocab),
            d_model=d,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=hd,
            d_ff=d_ff,
            max_seq_len=ctx,
            norm="rms",
            norm_eps=_meta_float(reader, path, "llama.attention.layer_norm_rms_epsilon", 1e-5,
                                 0.0, 1.0),
            pos="rope",
            rope_layout="interleaved",
            rope_base=_meta_float(reader, path, "llama.rope.freq_base", 10000.0, 1.0, 1e12),
            mlp="swiglu",
            tie_embeddings="output.weight" not in names,
        )
    except ConfigError as e:
        raise WeightsError(f"{path}: the metadata describes an invalid model ({e}); re-export "
                           "the file.") from None


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
        raise WeightsError(
            f"{path}: tensor {t.name} cannot be decoded ({e}); file is corrupt."
        ) from None
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

    from jaxlm.core.params import spec_shapes
    from jaxlm.weights.validate import check_shapes

    r = _reader(path)
    cfg = config_from_gguf(r, path)
    cfg = dataclasses.replace(cfg, param_dtype=dtype, compute_dtype=compute_dtype or dtype)
    tensors = {t.name: t for t in r.tensors}
    blocks = set()
    for name in tensors:
        parts = name.split(".")
        if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
            blocks.add(int(parts[1]))
    if blocks != set(range(cfg.n_layers)):
        raise WeightsError(
            f"{path}: metadata llama.block_count = {cfg.n_layers}, but the file has tensors for "
            f"{len(blocks)} blocks ({_ranges(blocks)}); the metadata and the tensors disagree: "
            "re-export the file."
        )
    want = spec_shapes(cfg)  # jaxlm layout, from the one declaration (core.param_spec)
    np_dtype = np.dtype("float32") if dtype == "float32" else None

    def get(name, param, split):
        """Tensor ``name`` as [out, in] numpy, checked against the shape of ``param``.

        ``split``: how the jaxlm shape folds into GGUF's 2-D [out, in] matrix: "in" (first
        axis is the input: [d, h, hd] -> [h*hd, d]), "out" (last axis is the output:
        [h, hd, d] -> [d, h*hd]) or "same" (vectors and the embedding).
        """
        if name not in tensors:
            raise WeightsError(f"{path}: tensor {name} is missing; the file is incomplete.")
        t = tensors[name]
        shape = want[param]
        if split == "in":
            expect = (int(np.prod(shape[1:])), shape[0])
        elif split == "out":
            expect = (shape[-1], int(np.prod(shape[:-1])))
        else:
            expect = shape
        got = tuple(int(x) for x in reversed(t.shape))
        if got != expect:
            raise WeightsError(
                f"{path}: tensor {name} has shape {got}, but the metadata (embedding_length="
                f"{cfg.d_model}, feed_forward_length={cfg.d_ff}, head_count={cfg.n_heads}, "
                f"head_count_kv={cfg.n_kv_heads}, vocab_size={cfg.vocab_size}) implies {expect}; "
                "the metadata and the tensors disagree: re-export the file."
            )
        a = _dequant(t, path)
        return a if np_dtype is not None else _cast(a, dtype)

    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    params: dict[str, Any] = {"embed": get("token_embd.weight", "embed", "same")}
    layer_list = []
    for i in range(cfg.n_layers):
        b, p = f"blk.{i}.", f"layers/{i}/"
        layer_list.append(
            {
                "attn_norm": {"scale": get(b + "attn_norm.weight", p + "attn_norm/scale", "same")},
                "mlp_norm": {"scale": get(b + "ffn_norm.weight", p + "mlp_norm/scale", "same")},
                "attn": {
                    "wq": get(b + "attn_q.weight", p + "attn/wq", "in").T.reshape(d, h, hd),
                    "wk": get(b + "attn_k.weight", p + "attn/wk", "in").T.reshape(d, kv, hd),
                    "wv": get(b + "attn_v.weight", p + "attn/wv", "in").T.reshape(d, kv, hd),
                    "wo": get(b + "attn_output.weight", p + "attn/wo", "out").T.reshape(h, hd, d),
                },
                "mlp": {
                    k: np.ascontiguousarray(get(b + f"ffn_{n}.weight", p + f"mlp/{k}", "in").T)
                    for n, k in (("gate", "w_gate"), ("up", "w_up"), ("down", "w_down"))
                },
            }
        )
    params["layers"] = layer_list
    params["final_norm"] = {"scale": get("output_norm.weight", "final_norm/scale", "same")}
    if not cfg.tie_embeddings:
        params["lm_head"] = np.ascontiguousarray(get("output.weight", "lm_head", "in").T)
    for lp in layer_list:
        for k in ("wq", "wk", "wv", "wo"):
            lp["attn"][k] = np.ascontiguousarray(lp["attn"][k])
    check_shapes(params, cfg, path)
    return cfg, params


def _ranges(ids: set[int]) -> str:
    if not ids:
        return "none"
    s = sorted(ids)
    return f"{s[0]}..{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ", ".join(map(str, s[:8]))


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
