"""Second moment of MLP keys C = E[k k^T] from a text sample, cached on disk.

Keys are the "mlp_hidden" activations (the input of ``w_down``) at every token
of passages from ``pydoc_data.topics`` (the Python docs bundled with CPython:
offline, deterministic). ROME/MEMIT use Wikipedia; this is a small stand-in.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import ModelConfig
from jaxlm.core.transformer import default_positions, embed, run_blocks
from jaxlm.editing import hooks
from jaxlm.editing.requests import TokenizerLike

Params = dict[str, Any]


def text_sample(n_chars: int = 200_000) -> str:
    """Deterministic passages of the Python documentation (pydoc_data.topics)."""
    from pydoc_data.topics import topics

    parts, total = [], 0
    for name in sorted(topics):
        t = " ".join(topics[name].split())
        parts.append(t)
        total += len(t)
        if total >= n_chars:
            break
    return "\n\n".join(parts)


def token_chunks(tok: TokenizerLike, n_tokens: int, seq_len: int) -> np.ndarray:
    """[N, seq_len] token chunks of the text sample, N * seq_len >= n_tokens."""
    n_chunks = -(-n_tokens // seq_len)
    ids: list[int] = []
    n_chars = 4 * n_tokens + 1000
    while len(ids) < n_chunks * seq_len:
        ids = tok.encode(text_sample(n_chars))
        if n_chars > 5_000_000:
            raise ValueError("text sample too small for the requested number of tokens")
        n_chars *= 2
    return np.asarray(ids[: n_chunks * seq_len], np.int32).reshape(n_chunks, seq_len)


@functools.partial(jax.jit, static_argnames=("cfg", "layers"))
def _moments(params, tokens, *, cfg, layers):
    positions = default_positions(tokens, None)
    x = embed(params, cfg, tokens, positions)
    cap = run_blocks(params, cfg, x, positions=positions, layers=range(layers[-1] + 1),
                     capture=(("mlp_hidden",), layers)).captured["mlp_hidden"]
    k = cap.reshape(cap.shape[0], -1, cap.shape[-1]).astype(jnp.float32)  # [Lc, N, F]
    return jnp.einsum("lnf,lng->lfg", k, k)  # [Lc, F, F]


def fingerprint(params: Params, cfg: ModelConfig, upto: int) -> str:
    """A short hash of the config and a strided sample of the params of blocks <= ``upto``."""
    h = hashlib.sha1(repr(cfg).encode())
    leaves = jax.tree.leaves({"embed": params["embed"], "layers": params["layers"][: upto + 1]})
    for x in leaves:
        h.update(np.ascontiguousarray(np.asarray(x).ravel()[::997]).tobytes())
    return h.hexdigest()[:12]


def key_second_moments(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    layers: Sequence[int],
    *,
    n_tokens: int = 4096,
    seq_len: int = 128,
    batch: int = 8,
    cache_dir: str | pathlib.Path | None = None,
) -> dict[int, np.ndarray]:
    """C_l = mean over text-sample tokens of k k^T at each block in ``layers`` ([F, F] float64).

    Args:
        params, cfg: the (unedited) model.
        tok: tokenizer.
        layers: block indices.
        n_tokens: tokens in the sample (>= F for a full-rank estimate).
        seq_len, batch: chunking of the forward passes.
        cache_dir: if given, results are cached there as .npy per layer.
    """
    layers = tuple(sorted(set(int(x) for x in layers)))
    if not layers or layers[0] < 0 or layers[-1] >= cfg.n_layers:
        raise ValueError(f"layers {layers} out of range for a {cfg.n_layers}-layer model")
    seq_len = min(seq_len, cfg.max_seq_len)
    fp = fingerprint(params, cfg, layers[-1])
    paths = {}
    if cache_dir is not None:
        cache_dir = pathlib.Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        paths = {lay: cache_dir / f"cov_{fp}_l{lay}_n{n_tokens}_s{seq_len}.npy" for lay in layers}
        if all(p.exists() for p in paths.values()):
            return {lay: np.load(p) for lay, p in paths.items()}
    chunks = token_chunks(tok, n_tokens, seq_len)
    sub = hooks.truncate(params, layers[-1] + 1)
    acc = np.zeros((len(layers), cfg.d_ff, cfg.d_ff), np.float64)
    count = 0
    for i in range(0, len(chunks), batch):
        x = chunks[i : i + batch]
        acc += np.asarray(_moments(sub, jnp.asarray(x), cfg=cfg, layers=layers), np.float64)
        count += x.size
    out = {lay: acc[j] / count for j, lay in enumerate(layers)}
    for lay, p in paths.items():
        np.save(p, out[lay])
    return out


def shrink(c: np.ndarray, alpha: float) -> np.ndarray:
    """C + alpha * tr(C)/F * I (keeps C well conditioned when the sample is small)."""
    f = c.shape[0]
    return c + alpha * np.trace(c) / f * np.eye(f)
