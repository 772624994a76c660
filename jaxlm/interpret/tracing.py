"""Activation capture, activation patching and causal tracing (Meng et al. 2022).

Causal tracing: run the prompt clean and keep the activations of one site
("resid_post", "mlp_out" or "attn_out"); run it again with Gaussian noise added to
the subject tokens' embeddings (the corrupted run); then, for every (layer l,
position i), rerun the corrupted input while restoring the clean activation at
(l, i) (or at a window of layers around l for MLP / attention sites). The
probability of the answer token after restoration, compared with the corrupted
probability, is the indirect effect of that state.

Everything goes through the substrate's ``intervene`` hook; the hook is built and
closed over inside the jitted functions here.

Public API (imported by ``jaxlm.editing`` for ROME's layer choice):

    res = causal_trace(params, cfg, tokens, (s0, s1), target_id,
                       noise=None, n_samples=10, key=key, site="resid_post", window=1)
    res.probs            # [L, T] p(target) after restoring (layer, position)
    res.indirect_effect  # [L, T] res.probs - res.p_corrupt
    res.p_clean, res.p_corrupt
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import ModelConfig, apply

Array = jax.Array
SITES = ("embed", "attn_out", "mlp_hidden", "mlp_out", "resid_post")
TRACE_SITES = ("resid_post", "mlp_out", "attn_out")


def _check_tokens(tokens) -> Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be [T] or [B, T] ids, got shape {tokens.shape}")
    return tokens.astype(jnp.int32)


# --------------------------------------------------------------------------- capture
@functools.partial(jax.jit, static_argnames=("cfg", "sites"))
def _capture(params, tokens, attn_bias, *, cfg, sites):
    store: dict[str, dict[int, Array]] = {s: {} for s in sites}

    def hook(site, layer, act):
        if site in store:
            store[site][layer] = act
        return act

    out = apply(params, cfg, tokens, attn_bias=attn_bias, intervene=hook)
    acts = {}
    for s in sites:
        layers = sorted(store[s])
        acts[s] = jnp.stack([store[s][i] for i in layers])  # [L(+0/1), B, T, *]
    return out.logits, acts


def run_with_cache(params, cfg: ModelConfig, tokens, sites: Sequence[str] = ("resid_post",),
                   attn_bias: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """One forward pass that also returns activations of the requested sites.

    Args:
        params, cfg: the model.
        tokens: [T] or [B, T] ids.
        sites: any of ``SITES``.
        attn_bias: optional additive attention bias (see ``jaxlm.core.apply``).

    Returns:
        (logits [B, T, V], {site: [L, B, T, width]}); "embed" has a leading axis of 1.
    """
    bad = [s for s in sites if s not in SITES]
    if bad:
        raise ValueError(f"unknown sites {bad}; choose from {SITES}")
    tokens = _check_tokens(tokens)
    return _capture(params, tokens, attn_bias, cfg=cfg, sites=tuple(sites))


# --------------------------------------------------------------------------- restore sweep
def _restore_probs(params, cfg, tokens, embed_delta, clean, masks, target_id, site):
    """Mean p(target) over the corrupted batch for each restore mask.

    tokens: [N, T] corrupted-run ids; embed_delta: [N, T, D] added at "embed";
    clean: [L, T, W] clean activations of ``site``; masks: [M, L, T] bool (restore
    where True). Returns [M].
    """

    def one(mask):  # [L, T]
        def hook(s, layer, act):
            if s == "embed":
                return act + embed_delta.astype(act.dtype)
            if s == site:
                return jnp.where(mask[layer][None, :, None], clean[layer][None], act)
            return act

        logits = apply(params, cfg, tokens, intervene=hook, last_logits_only=True).logits
        return jnp.mean(jax.nn.softmax(logits[:, -1], axis=-1)[:, target_id])

    return jax.lax.map(one, masks)


@functools.partial(jax.jit, static_argnames=("cfg", "site"))
def restore_sweep(params, tokens, embed_delta, clean, masks, target_id, *, cfg, site):
    """Jitted ``_restore_probs``: p(target) for each [L, T] restore mask in ``masks``."""
    return _restore_probs(params, cfg, tokens, embed_delta, clean, masks, target_id, site)


def layer_window_masks(n_layers: int, t: int, window: int) -> np.ndarray:
    """Restore masks [L * T, L, T] for every (layer l, position i), window of layers around l."""
    masks = np.zeros((n_layers, t, n_layers, t), bool)
    for layer in range(n_layers):
        lo = max(0, layer - window // 2)
        hi = min(n_layers, lo + window)
        for i in range(t):
            masks[layer, i, lo:hi, i] = True
    return masks.reshape(n_layers * t, n_layers, t)


@dataclasses.dataclass(frozen=True)
class TraceResult:
    """Causal-tracing output.

    Attributes:
        probs: [L, T] p(target) in the corrupted run with (layer, position) restored.
        p_clean: p(target) of the clean run.
        p_corrupt: mean p(target) of the corrupted runs (nothing restored).
        site: the restored site; window: layers restored around each row.
    """

    probs: np.ndarray
    p_clean: float
    p_corrupt: float
    site: str
    window: int

    @property
    def indirect_effect(self) -> np.ndarray:
        """[L, T] IE = p_restored - p_corrupt."""
        return self.probs - self.p_corrupt

    @property
    def normalized_effect(self) -> np.ndarray:
        """[L, T] IE / (p_clean - p_corrupt): 1 = restoring this state recovers everything."""
        return self.indirect_effect / max(self.p_clean - self.p_corrupt, 1e-9)


def embedding_noise_std(params) -> float:
    """Standard deviation of the token-embedding entries (Meng et al. use 3x this)."""
    return float(jnp.std(jnp.asarray(params["embed"], jnp.float32)))


def causal_trace(
    params,
    cfg: ModelConfig,
    tokens,
    subject_span: tuple[int, int],
    target_id: int,
    *,
    noise: float | None = None,
    n_samples: int = 10,
    key: Array,
    site: str = "resid_post",
    window: int = 1,
) -> TraceResult:
    """Causal tracing heat map for one prompt.

    Args:
        params, cfg: the model.
        tokens: [T] prompt ids; the target is the next token after the prompt.
        subject_span: (start, end) token indices of the subject, end exclusive.
        target_id: the answer token o.
        noise: std of the Gaussian added to subject embeddings; default
            3 * std of the embedding matrix (Meng et al.).
        n_samples: corrupted runs averaged per cell.
        key: PRNG key of the noise (the same noise is used for every cell).
        site: "resid_post" (hidden state after each block), "mlp_out" or "attn_out".
        window: consecutive layers restored together (Meng et al. use 10 for MLP /
            attention, 1 for the residual stream).

    Returns:
        TraceResult with probs [L, T].
    """
    tokens = _check_tokens(tokens)
    if tokens.shape[0] != 1:
        raise ValueError(f"causal_trace explains one prompt; got batch {tokens.shape[0]}")
    t = tokens.shape[1]
    s0, s1 = (int(x) for x in subject_span)
    if not 0 <= s0 < s1 <= t:
        raise ValueError(f"subject_span {subject_span} must satisfy 0 <= start < end <= T={t}")
    if site not in TRACE_SITES:
        raise ValueError(f"site must be one of {TRACE_SITES}, got {site!r}")
    if not 1 <= window <= cfg.n_layers:
        raise ValueError(f"window must be in [1, n_layers={cfg.n_layers}], got {window}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not 0 <= int(target_id) < cfg.vocab_size:
        raise ValueError(f"target_id {target_id} outside the vocabulary")
    std = 3.0 * embedding_noise_std(params) if noise is None else float(noise)
    logits, acts = run_with_cache(params, cfg, tokens, (site,))
    p_clean = float(jax.nn.softmax(logits[0, -1])[target_id])
    clean = acts[site][:, 0]  # [L, T, W]
    span = np.zeros((t,), np.float32)
    span[s0:s1] = 1.0
    eps = jax.random.normal(key, (n_samples, t, cfg.d_model), jnp.float32)
    delta = std * eps * jnp.asarray(span)[None, :, None]
    run_toks = jnp.broadcast_to(tokens, (n_samples, t))
    masks = layer_window_masks(cfg.n_layers, t, window)
    none = np.zeros((1, cfg.n_layers, t), bool)
    all_masks = jnp.asarray(np.concatenate([none, masks]))
    probs = restore_sweep(params, run_toks, delta, clean, all_masks, int(target_id), cfg=cfg,
                          site=site)
    probs = np.asarray(probs)
    return TraceResult(probs[1:].reshape(cfg.n_layers, t), p_clean, float(probs[0]), site, window)


def activation_patching(
    params,
    cfg: ModelConfig,
    clean_tokens,
    corrupt_tokens,
    target_id: int,
    *,
    site: str = "resid_post",
    window: int = 1,
) -> TraceResult:
    """Token-substitution patching: run ``corrupt_tokens`` restoring each clean (layer, position).

    Both prompts must have the same length (e.g. "France" -> "Poland" with one-token
    names). Returns a TraceResult whose ``p_corrupt`` is the corrupted prompt's p(target).
    """
    clean_tokens = _check_tokens(clean_tokens)
    corrupt_tokens = _check_tokens(corrupt_tokens)
    if clean_tokens.shape != corrupt_tokens.shape or clean_tokens.shape[0] != 1:
        raise ValueError(
            f"clean {clean_tokens.shape} and corrupt {corrupt_tokens.shape} prompts must be one "
            "sequence each, of equal length"
        )
    if site not in TRACE_SITES:
        raise ValueError(f"site must be one of {TRACE_SITES}, got {site!r}")
    t = clean_tokens.shape[1]
    logits, acts = run_with_cache(params, cfg, clean_tokens, (site,))
    p_clean = float(jax.nn.softmax(logits[0, -1])[target_id])
    masks = layer_window_masks(cfg.n_layers, t, window)
    none = np.zeros((1, cfg.n_layers, t), bool)
    delta = jnp.zeros((1, t, cfg.d_model), jnp.float32)
    probs = restore_sweep(params, corrupt_tokens, delta, acts[site][:, 0],
                          jnp.asarray(np.concatenate([none, masks])), int(target_id),
                          cfg=cfg, site=site)
    probs = np.asarray(probs)
    return TraceResult(probs[1:].reshape(cfg.n_layers, t), p_clean, float(probs[0]), site, window)
