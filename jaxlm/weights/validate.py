"""The loaders' error for weights that do not fit the model config.

The expected shapes are ``jaxlm.core.params.param_spec``'s (through ``find_mismatch``): the
one parameter declaration of the model, no second table to keep in sync.
"""

from __future__ import annotations

from typing import Any

from jaxlm.core.config import ModelConfig
from jaxlm.core.params import find_mismatch
from jaxlm.weights.errors import WeightsError


def check_shapes(params: Any, cfg: ModelConfig, source: Any) -> None:
    """Raises one ``WeightsError`` naming ``source`` if ``params`` do not fit ``cfg``.

    Compares the parameter names and every shape with ``param_spec(cfg)`` (dtypes are the
    loader's choice: it casts to the requested one).
    """
    m = find_mismatch(params, cfg, dtypes=False)
    if m is None:
        return
    if m.missing or m.unexpected:
        missing, extra = sorted(m.missing), sorted(m.unexpected)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        raise WeightsError(
            f"{source}: the weights do not match the model config ({'; '.join(parts)}); the file "
            "is incomplete or its metadata is wrong: re-export it."
        )
    got = "no array" if m.got is None else f"shape {tuple(m.got.shape)}"
    raise WeightsError(
        f"{source}: parameter {m.path} has {got}, but the model config (d_model="
        f"{cfg.d_model}, n_layers={cfg.n_layers}, n_heads={cfg.n_heads}, n_kv_heads="
        f"{cfg.n_kv_heads}, head_dim={cfg.head_dim}, d_ff={cfg.d_ff}, vocab_size="
        f"{cfg.vocab_size}) implies {tuple(m.want.shape)}; the metadata and the tensors "
        "disagree: re-export the file."
    )
