"""One declaration of every weight: ``param_spec(cfg)`` drives init, sharding and load checks.

``param_spec(cfg)`` returns the params pytree with a ``ParamInfo`` at every leaf (the
way jax-llm-examples declares an ``ArrayInfo`` per weight)::

    ParamInfo(shape=(576, 9, 64), dtype=float32,
              logical_axes=("embed", "heads", "head_dim"), init=normal(0.02))

Consumers:

* ``init(key, cfg, out_shardings=None)`` materialises the spec (jitted; with
  ``out_shardings`` each weight is created already sharded).
* ``jaxlm.train.parallel`` maps ``logical_axes`` to mesh axes (``logical_axes(cfg)``).
* ``check_params(params, cfg, source)`` refuses a tree whose structure, shapes or dtypes
  disagree with the spec, naming the leaf path, the expected and the found shape/dtype,
  and the source (file). The weight loaders check each tensor against ``spec_shapes(cfg)``
  and the converted tree with ``find_mismatch`` (their errors name the file's metadata).

A weight leaf may be a small pytree (e.g. quantized values + scales): subclass
``ParamInfo`` and override ``abstract`` (the ``jax.ShapeDtypeStruct`` pytree the leaf
must match) and ``materialize``; ``check_params`` and ``init`` only go through those two.
``ParamInfo`` is registered as a pytree *leaf* (not a node), so ``jax.tree.map`` over a
spec visits one ``ParamInfo`` per weight.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.core.config import ModelConfig

Array = jax.Array
Initializer = Callable[[Array, tuple[int, ...], Any], Array]


def normal(std: float) -> Initializer:
    """``std * N(0, 1)`` (sampled in float32, then cast to the weight dtype)."""

    def f(key, shape, dtype):
        return (std * jax.random.normal(key, shape)).astype(dtype)

    f.__qualname__ = f"normal({std:g})"
    return f


def zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """Declaration of one weight.

    Attributes:
        shape: the array shape.
        dtype: storage dtype.
        logical_axes: one name per dimension ("vocab", "embed", "heads", "kv_heads",
            "head_dim", "mlp", "norm"; None = never sharded), mapped to mesh axes by
            the sharding rules of ``jaxlm.train.parallel``.
        init: ``init(key, shape, dtype) -> array``.
    """

    shape: tuple[int, ...]
    dtype: Any
    logical_axes: tuple[str | None, ...]
    init: Initializer = zeros

    def __post_init__(self):
        if len(self.logical_axes) != len(self.shape):
            raise ValueError(f"ParamInfo: {len(self.logical_axes)} logical axes for shape "
                             f"{self.shape}")

    def abstract(self) -> Any:
        """What the leaf must look like: a ShapeDtypeStruct (a pytree of them for
        structured formats)."""
        return jax.ShapeDtypeStruct(self.shape, jnp.dtype(self.dtype))

    def materialize(self, key: Array) -> Any:
        return self.init(key, self.shape, jnp.dtype(self.dtype))


def _is_info(x) -> bool:
    return isinstance(x, ParamInfo)


def _norm_spec(cfg: ModelConfig) -> dict[str, ParamInfo]:
    p = {"scale": ParamInfo((cfg.d_model,), cfg.pdtype, ("norm",), ones)}
    if cfg.norm == "layer":
        p["bias"] = ParamInfo((cfg.d_model,), cfg.pdtype, ("norm",), zeros)
    return p


def param_spec(cfg: ModelConfig) -> dict[str, Any]:
    """The params pytree of ``cfg`` with a ``ParamInfo`` at every leaf.

    Layout (``layers`` is a list of per-layer dicts; see ``jaxlm.core.transformer``)::

        {"embed", "pos_embed"?, "layers": [{"attn_norm", "mlp_norm"?, "attn", "mlp"}],
         "final_norm", "lm_head"?, "lm_head_bias"?}
    """
    d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    pd = cfg.pdtype
    w = normal(cfg.init_std)
    w_out = normal(cfg.init_std / math.sqrt(2 * cfg.n_layers))
    spec: dict[str, Any] = {"embed": ParamInfo((cfg.vocab_size, d), pd, ("vocab", "embed"), w)}
    if cfg.pos == "learned":
        spec["pos_embed"] = ParamInfo((cfg.max_seq_len, d), pd, (None, "embed"), w)

    def layer():
        attn = {
            "wq": ParamInfo((d, h, hd), pd, ("embed", "heads", "head_dim"), w),
            "wk": ParamInfo((d, kv, hd), pd, ("embed", "kv_heads", "head_dim"), w),
            "wv": ParamInfo((d, kv, hd), pd, ("embed", "kv_heads", "head_dim"), w),
            "wo": ParamInfo((h, hd, d), pd, ("heads", "head_dim", "embed"), w_out),
        }
        if cfg.use_bias:
            attn["bq"] = ParamInfo((h, hd), pd, ("heads", "head_dim"))
            attn["bk"] = ParamInfo((kv, hd), pd, ("kv_heads", "head_dim"))
            attn["bv"] = ParamInfo((kv, hd), pd, ("kv_heads", "head_dim"))
            attn["bo"] = ParamInfo((d,), pd, ("norm",))
        mlp = {"w_up": ParamInfo((d, f), pd, ("embed", "mlp"), w),
               "w_down": ParamInfo((f, d), pd, ("mlp", "embed"), w_out)}
        if cfg.mlp == "swiglu":
            mlp["w_gate"] = ParamInfo((d, f), pd, ("embed", "mlp"), w)
        if cfg.use_bias:
            mlp["b_up"] = ParamInfo((f,), pd, ("mlp",))
            mlp["b_down"] = ParamInfo((d,), pd, ("norm",))
            if cfg.mlp == "swiglu":
                mlp["b_gate"] = ParamInfo((f,), pd, ("mlp",))
        out = {"attn_norm": _norm_spec(cfg), "attn": attn, "mlp": mlp}
        if not cfg.parallel_block:
            out["mlp_norm"] = _norm_spec(cfg)
        return out

    spec["layers"] = [layer() for _ in range(cfg.n_layers)]
    spec["final_norm"] = _norm_spec(cfg)
    if not cfg.tie_embeddings:
        spec["lm_head"] = ParamInfo((d, cfg.vocab_size), pd, ("embed", "vocab"), w)
        if cfg.use_bias:
            spec["lm_head_bias"] = ParamInfo((cfg.vocab_size,), pd, ("vocab",))
    return spec


def _init_keys(key: Array, cfg: ModelConfig) -> dict[str, Any]:
    """One PRNG key per weight, in a tree shaped like ``param_spec(cfg)``.

    The derivation (split into L + 3; per layer q, k, v, o, mlp; mlp into up, down,
    gate) is fixed so a seed keeps giving the same weights.
    """
    keys = jax.random.split(key, cfg.n_layers + 3)
    spare = keys[2]  # zero/one initializers ignore their key
    tree: dict[str, Any] = {"embed": keys[0]}
    if cfg.pos == "learned":
        tree["pos_embed"] = keys[1]
    norm = {"scale": spare, "bias": spare}
    layer_keys = []
    for i in range(cfg.n_layers):
        kq, kk, kvv, ko, km = jax.random.split(keys[3 + i], 5)
        k1, k2, k3 = jax.random.split(km, 3)
        attn = {"wq": kq, "wk": kk, "wv": kvv, "wo": ko,
                "bq": spare, "bk": spare, "bv": spare, "bo": spare}
        mlp = {"w_up": k1, "w_down": k2, "w_gate": k3, "b_up": spare, "b_down": spare,
               "b_gate": spare}
        layer_keys.append({"attn_norm": norm, "mlp_norm": norm, "attn": attn, "mlp": mlp})
    tree["layers"] = layer_keys
    tree["final_norm"] = norm
    tree["lm_head"] = keys[2]
    tree["lm_head_bias"] = spare
    return tree


def _materialize(spec: Any, keys: Any) -> Any:
    if _is_info(spec):
        return spec.materialize(keys)
    if isinstance(spec, dict):
        return {k: _materialize(v, keys[k]) for k, v in spec.items()}
    return [_materialize(v, k) for v, k in zip(spec, keys, strict=True)]


def init_from_spec(key: Array, cfg: ModelConfig) -> dict[str, Any]:
    """Params of ``cfg`` from ``param_spec`` (not jitted; ``init`` wraps it in ``jax.jit``)."""
    return _materialize(param_spec(cfg), _init_keys(key, cfg))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _init_jit(key, *, cfg):
    return init_from_spec(key, cfg)


def init(key: Array, cfg: ModelConfig, out_shardings: Any = None) -> dict[str, Any]:
    """Random params for ``cfg``, jitted; ``out_shardings`` (a tree of shardings like the
    params, e.g. from ``jaxlm.train.parallel``) creates every weight already sharded."""
    if out_shardings is None:
        return _init_jit(key, cfg=cfg)
    return jax.jit(functools.partial(init_from_spec, cfg=cfg), out_shardings=out_shardings)(key)


def abstract_params(cfg: ModelConfig) -> Any:
    """ShapeDtypeStructs of every weight (no allocation)."""
    return jax.tree.map(lambda i: i.abstract(), param_spec(cfg), is_leaf=_is_info)


def logical_axes(cfg: ModelConfig) -> Any:
    """A tree like the params with the tuple of logical axis names at every weight."""
    return jax.tree.map(lambda i: i.logical_axes, param_spec(cfg), is_leaf=_is_info)


def path_str(path) -> str:
    """'layers/3/attn/wq' for a jax key path (used in error messages and diffs)."""
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(str(k.idx))
        else:
            out.append(str(k))
    return "/".join(out)


def spec_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """``{"layers/0/attn/wq": (d, h, hd), ...}``: every weight's shape from ``param_spec``
    (what loaders check each tensor of a file against before converting it)."""
    return {path_str(p): tuple(i.shape) for p, i in
            jax.tree_util.tree_flatten_with_path(param_spec(cfg), is_leaf=_is_info)[0]}


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """The first way a params tree disagrees with ``param_spec(cfg)``.

    Either ``missing``/``unexpected`` leaf paths (the structure differs), or the first
    leaf ``path`` (in sorted path order) whose shape/dtype ``got`` differs from ``want``
    (``got`` is None when that leaf is not an array).
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    path: str | None = None
    got: jax.ShapeDtypeStruct | None = None
    want: jax.ShapeDtypeStruct | None = None


def find_mismatch(params: Any, cfg: ModelConfig, *, dtypes: bool = True) -> Mismatch | None:
    """Compares a params tree with ``param_spec(cfg)`` (structure, shapes and, with
    ``dtypes``, dtypes); None when they agree. ``check_params`` and the weight loaders
    turn the result into their error messages."""
    spec = param_spec(cfg)
    want = {path_str(p): i for p, i in
            jax.tree_util.tree_flatten_with_path(spec, is_leaf=_is_info)[0]}
    got = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = [k for k in want if not any(g == k or g.startswith(k + "/") for g in got)]
    extra = [g for g in got if not any(g == k or g.startswith(k + "/") for k in want)]
    if missing or extra:
        return Mismatch(missing=tuple(missing), unexpected=tuple(extra))
    for path, info in want.items():
        expect = info.abstract()
        if isinstance(expect, jax.ShapeDtypeStruct):
            leaves = [(path, got[path])] if path in got else []
            exp_leaves = [(path, expect)]
        else:  # structured leaf: compare its sub-leaves
            exp_leaves = [(path + "/" + path_str(p), e) for p, e in
                          jax.tree_util.tree_flatten_with_path(expect)[0]]
            leaves = [(k, got.get(k)) for k, _ in exp_leaves]
        for (name, x), (_, e) in zip(leaves, exp_leaves, strict=True):
            if x is None or not hasattr(x, "shape"):
                return Mismatch(path=name, want=e)
            if tuple(x.shape) != tuple(e.shape) or (dtypes and jnp.dtype(x.dtype) != e.dtype):
                return Mismatch(path=name, got=jax.ShapeDtypeStruct(tuple(x.shape), x.dtype),
                                want=e)
    return None


def check_params(params: Any, cfg: ModelConfig, source: str = "params") -> None:
    """Refuses a params tree that disagrees with ``param_spec(cfg)``.

    Raises:
        ValueError naming ``source``, the leaf path, and the expected and found
        shape/dtype (or the missing / unexpected leaves).
    """
    m = find_mismatch(params, cfg)
    if m is None:
        return
    if m.missing or m.unexpected:
        missing, extra = list(m.missing), list(m.unexpected)
        raise ValueError(
            f"{source}: params do not match the model config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{'...' if len(extra) > 5 else ''}; was the file made for another architecture?"
        )
    if m.got is None:
        raise ValueError(f"{source}: weight {m.path!r} is missing or not an array")
    g, e = m.got, m.want
    raise ValueError(
        f"{source}: weight {m.path!r} has shape {tuple(g.shape)} {jnp.dtype(g.dtype)}, "
        f"expected {tuple(e.shape)} {e.dtype} from the model config"
    )


def infer_config(params: Any, **overrides: Any) -> ModelConfig:
    """A ModelConfig with the shape-determining fields read from a params tree.

    Fields that do not change any weight shape (eps, RoPE base/layout, ...) keep their
    defaults unless given in ``overrides``. Used where only params are at hand (e.g.
    sharding a train state).
    """
    lay = params["layers"]
    l0 = lay[0] if isinstance(lay, (list, tuple)) else jax.tree.map(lambda x: x[0], lay)
    v, d = params["embed"].shape
    _, h, hd = l0["attn"]["wq"].shape
    n_layers = len(lay) if isinstance(lay, (list, tuple)) else lay["attn"]["wq"].shape[0]
    kw = dict(
        vocab_size=v, d_model=d, n_layers=n_layers,
        n_heads=h, n_kv_heads=l0["attn"]["wk"].shape[1], head_dim=hd,
        d_ff=l0["mlp"]["w_up"].shape[1],
        norm="layer" if "bias" in params["final_norm"] else "rms",
        mlp="swiglu" if "w_gate" in l0["mlp"] else "gelu",
        parallel_block="mlp_norm" not in l0, tie_embeddings="lm_head" not in params,
        use_bias="bq" in l0["attn"], param_dtype=str(jnp.dtype(params["embed"].dtype)),
    )
    if "pos_embed" in params:
        kw.update(pos="learned", max_seq_len=params["pos_embed"].shape[0])
    kw.update(overrides)
    return ModelConfig(**kw)
