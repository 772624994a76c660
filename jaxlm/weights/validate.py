"""Checks that loaded weights have exactly the shapes the model config implies.

The expected shapes come from ``jax.eval_shape`` of ``jaxlm.core.transformer.init``, so
they follow the one parameter declaration of the model (no second table to keep in sync).
"""

from __future__ import annotations

import functools
from typing import Any

from jaxlm.core.config import ModelConfig
from jaxlm.weights.errors import WeightsError


@functools.lru_cache(maxsize=8)
def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """``{"layers/0/attn/wq": (d, h, hd), ...}`` for ``cfg`` (no arrays are allocated)."""
    import jax

    from jaxlm.core.transformer import init

    spec = jax.eval_shape(functools.partial(init, cfg=cfg), jax.random.PRNGKey(0))
    return _flat(spec)


def _flat(tree) -> dict[str, tuple[int, ...]]:
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[key] = tuple(int(s) for s in getattr(leaf, "shape", ()))
    return out


def check_shapes(params: Any, cfg: ModelConfig, source: Any) -> None:
    """Raises one ``WeightsError`` naming ``source`` if ``params`` do not fit ``cfg``.

    Compares the parameter names and every shape with what ``init(key, cfg)`` would make.
    """
    want, got = expected_shapes(cfg), _flat(params)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        raise WeightsError(
            f"{source}: the weights do not match the model config ({'; '.join(parts)}); the file "
            "is incomplete or its metadata is wrong: re-export it."
        )
    for k, shape in want.items():
        if got[k] != shape:
            raise WeightsError(
                f"{source}: parameter {k} has shape {got[k]}, but the model config (d_model="
                f"{cfg.d_model}, n_layers={cfg.n_layers}, n_heads={cfg.n_heads}, n_kv_heads="
                f"{cfg.n_kv_heads}, head_dim={cfg.head_dim}, d_ff={cfg.d_ff}, vocab_size="
                f"{cfg.vocab_size}) implies {shape}; the metadata and the tensors disagree: "
                "re-export the file."
            )
