"""Keys and target values for locate-and-edit methods (ROME's k* and v*, MEMIT's z).

- ``make_contexts``: short random prefixes sampled from the model ("{}" first),
  as ROME/MEMIT average keys and the value loss over them.
- ``compute_keys``: k* = mean over contexts of the "mlp_hidden" activation (the
  input of ``w_down``) at the subject's last token; also the bare-prompt key.
- ``optimize_delta``: delta* = argmin NLL(target_new | context + prompt, delta added
  at the subject's last token at (site, layer)) + kl_factor * KL(P_delta || P) on
  "{subject} is a" + weight_decay * ||delta|| / ||v0||^2, Adam, with
  ||delta|| <= clamp_norm_factor * ||v0|| after each step (ROME's compute_v).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.core import ModelConfig
from jaxlm.core.transformer import embed, run_blocks, stack_layers
from jaxlm.editing import hooks
from jaxlm.editing.requests import EditRequest, TokenizerLike, encode_prompt, target_ids

Params = dict[str, Any]
CONTEXT_SEEDS = ("The", "Therefore", "Because", "I", "You")


@dataclasses.dataclass(frozen=True)
class ValueConfig:
    """Hyper-parameters of the delta optimisation (EasyEdit/ROME defaults where they exist).

    Attributes:
        lr: Adam learning rate (0.5).
        steps: maximum Adam steps (20).
        kl_factor: weight of the KL term on the "{} is a" essence prompt (0.0625).
        weight_decay: weight of ||delta|| / ||v0||^2 (1e-3).
        clamp_norm_factor: ||delta|| is projected to <= this * ||v0|| (4.0).
        stop_nll: stop early once the mean target NLL is below this (0.05).
        kl_prompt: essence prompt template for the KL term.
        single_token: require single-token targets.
    """

    lr: float = 0.5
    steps: int = 20
    kl_factor: float = 0.0625
    weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    stop_nll: float = 0.05
    kl_prompt: str = "{} is a"
    single_token: bool = True


def make_contexts(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    *,
    n: int = 5,
    length: int = 5,
    seed: int = 0,
    top_k: int = 5,
) -> list[str]:
    """Context templates: "{}" plus ``n`` model-sampled prefixes "<text>. {}" of ``length``
    tokens (top-k sampling; reuses the jitted next-token scorer, no extra compilation)."""
    if n == 0:
        return ["{}"]
    rng = np.random.default_rng(seed)
    seqs = [tok.encode(CONTEXT_SEEDS[i % len(CONTEXT_SEEDS)]) for i in range(n)]
    for _ in range(length):
        lp = hooks.next_token_logprobs(params, cfg, seqs)
        for s, row in zip(seqs, lp, strict=True):
            top = np.argsort(-row)[:top_k]
            p = np.exp(row[top] - row[top].max())
            s.append(int(rng.choice(top, p=p / p.sum())))
    ctx = ["{}"]
    for s in seqs:
        text = tok.decode(s).replace("{", "").replace("}", "")
        ctx.append(" ".join(text.split()) + ". {}")
    return ctx


def context_activations(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    request: EditRequest,
    contexts: Sequence[str],
    layer: int,
    site: str = "mlp_hidden",
) -> np.ndarray:
    """Activations at (site, layer) at the subject's last token: one row per context, then one
    for the bare prompt ([len(contexts) + 1, X] float64)."""
    template = request.template
    encs = [encode_prompt(tok, template, request.subject, c) for c in contexts]
    encs.append(encode_prompt(tok, template, request.subject, "{}"))
    idx = np.array([e.subject_last for e in encs])
    toks, pos, _ = hooks.pad_batch([e.ids for e in encs])
    h = np.asarray(hooks.capture(params, cfg, toks, pos, layer=layer, site=site))
    return h[np.arange(len(encs)), idx].astype(np.float64)


def compute_keys(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    request: EditRequest,
    contexts: Sequence[str],
    layer: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Keys at block ``layer``: (k* averaged over ``contexts`` [F], bare-prompt key [F]), float64."""
    keys = context_activations(params, cfg, tok, request, contexts, layer, "mlp_hidden")
    return keys[:-1].mean(0), keys[-1]


@functools.partial(jax.jit, static_argnames=("cfg", "sites"))
def _subject_acts(params, tokens, positions, idx, *, cfg, sites):
    names = tuple(sorted({s for s, _ in sites}))
    lays = tuple(sorted({l for _, l in sites}))
    x = embed(params, cfg, tokens, positions)
    cap = run_blocks(params, cfg, x, positions=positions, layers=range(lays[-1] + 1),
                     capture=(names, lays)).captured
    rows = jnp.arange(tokens.shape[0])
    return tuple(cap[s][lays.index(l)][rows, idx] for s, l in sites)


def subject_activations(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    requests: Sequence[EditRequest],
    contexts: Sequence[str],
    sites: Sequence[tuple[str, int]],
    *,
    chunk: int = 32,
) -> dict[tuple[str, int], np.ndarray]:
    """Activations at several (site, layer) at the subject's last token of every
    (request, context) prompt, in one forward pass per ``chunk`` rows (fixed shapes: one
    compilation per set of sites).

    Returns:
        {(site, layer): [len(requests), len(contexts), X] float64}.
    """
    sites = tuple((str(s), int(l)) for s, l in sites)
    top = max(l for _, l in sites)
    if not sites or min(l for _, l in sites) < 0 or top >= cfg.n_layers:
        raise ValueError(f"sites {sites} need layers in 0..{cfg.n_layers - 1}")
    encs = [encode_prompt(tok, r.template, r.subject, c) for r in requests for c in contexts]
    sub = hooks.truncate(params, top + 1)
    outs: list[list[np.ndarray]] = [[] for _ in sites]
    for i in range(0, len(encs), chunk):
        part = encs[i : i + chunk]
        toks, pos, _ = hooks.pad_batch([e.ids for e in part], multiple=16, rows=chunk)
        idx = np.zeros((chunk,), np.int32)
        idx[: len(part)] = [e.subject_last for e in part]
        acts = _subject_acts(sub, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(idx),
                             cfg=cfg, sites=sites)
        for j, a in enumerate(acts):
            outs[j].append(np.asarray(a, np.float64)[: len(part)])
    n, c = len(requests), len(contexts)
    return {s: np.concatenate(o).reshape(n, c, -1) for s, o in zip(sites, outs, strict=True)}


@dataclasses.dataclass
class DeltaBatch:
    """Rows: one per context (rewrite, with target) then one KL row."""

    tokens: np.ndarray  # [B, T]
    positions: np.ndarray  # [B, T]
    subj: np.ndarray  # [B] subject-last index
    pred: np.ndarray  # [B, M] positions whose logits predict targets (KL rows: col 0)
    tgt: np.ndarray  # [B, M] target ids
    tmask: np.ndarray  # [B, M] 1 where a target token counts
    is_rw: np.ndarray  # [B] rewrite rows
    is_kl: np.ndarray  # [B] KL rows


def build_delta_batch(
    tok: TokenizerLike, request: EditRequest, contexts: Sequence[str], hp: ValueConfig
) -> DeltaBatch:
    """Tokenises the rewrite prompts (context + prompt + target[:-1]) and the KL prompt."""
    tgt = target_ids(tok, request, single_token=hp.single_token)
    m = len(tgt)
    template = request.template
    seqs, subj, pred, tg, tm = [], [], [], [], []
    for c in contexts:
        e = encode_prompt(tok, template, request.subject, c)
        seqs.append(list(e.ids) + tgt[:-1])
        subj.append(e.subject_last)
        p0 = len(e.ids) - 1
        pred.append([p0 + j for j in range(m)])
        tg.append(tgt)
        tm.append([1.0] * m)
    kl = encode_prompt(tok, hp.kl_prompt, request.subject, "{}")
    seqs.append(list(kl.ids))
    subj.append(kl.subject_last)
    pred.append([len(kl.ids) - 1] * m)
    tg.append([0] * m)
    tm.append([0.0] * m)
    toks, pos, _ = hooks.pad_batch(seqs, multiple=16)  # coarse bucket: fewer recompilations
    n = len(contexts)
    return DeltaBatch(
        tokens=toks, positions=pos, subj=np.array(subj, np.int32),
        pred=np.array(pred, np.int32), tgt=np.array(tg, np.int32),
        tmask=np.array(tm, np.float32),
        is_rw=np.array([1.0] * n + [0.0], np.float32), is_kl=np.array([0.0] * n + [1.0], np.float32),
    )


def _tail_logprobs(d, sub, st, b, cfg, start, site, with_key=False):
    """Log-probs [B, M, V] at the target positions and the site activation [B, D] at the
    subject's last token (tail column 0, with ``d`` added there, which the activation
    includes); with ``with_key`` also the key ("mlp_hidden" of block ``start``) there [B, F].

    ``sub``: {"first": block start params, "rest": stacked later blocks or None, "head":
    params with the embedding/final norm/LM head}.
    """

    def add_delta(s, layer, act):
        if s == site and layer == start:
            hit = (jnp.arange(act.shape[1]) == 0)[None, :, None]  # [1, Tt, 1]
            return act + hit.astype(act.dtype) * d.astype(act.dtype)
        return act

    sites = (site, "mlp_hidden") if with_key else (site,)
    h, cap = hooks.run_tail(sub["first"], sub["rest"], cfg, start, st, add_delta,
                            capture=sites)
    lp = hooks.final_logprobs_at(sub["head"], cfg, h, b["pred_tail"])
    if with_key:
        return lp, cap[site][:, 0], cap["mlp_hidden"][:, 0]
    return lp, cap[site][:, 0]


def _delta_loss(d, sub, st, b, ref_logp, v0_norm, cfg, start, site, hp):
    lp, _ = _tail_logprobs(d, sub, st, b, cfg, start, site)  # [B, M, V]
    tok_lp = jnp.take_along_axis(lp, b["tgt"][..., None], axis=-1)[..., 0]  # [B, M]
    per_row = -(tok_lp * b["tmask"]).sum(1) / jnp.maximum(b["tmask"].sum(1), 1.0)
    nll = (per_row * b["is_rw"]).sum() / b["is_rw"].sum()
    kl_lp = lp[:, 0]  # [B, V]
    kl_row = jnp.sum(jnp.exp(kl_lp) * (kl_lp - ref_logp), axis=-1)
    kl = (kl_row * b["is_kl"]).sum() / jnp.maximum(b["is_kl"].sum(), 1.0)
    wd = hp.weight_decay * jnp.sqrt(jnp.sum(d * d) + 1e-12) / v0_norm**2  # safe grad at d = 0
    loss = nll + hp.kl_factor * kl + wd
    p_tgt = (jnp.exp(-per_row) * b["is_rw"]).sum() / b["is_rw"].sum()
    return loss, (nll, kl, p_tgt)


@functools.partial(jax.jit, static_argnames=("cfg", "start", "site", "hp"))
def _delta_step(d, opt_state, sub, st, b, ref_logp, v0_norm, *, cfg, start, site, hp):
    opt = optax.adam(hp.lr)
    (loss, aux), g = jax.value_and_grad(_delta_loss, has_aux=True)(
        d, sub, st, b, ref_logp, v0_norm, cfg, start, site, hp
    )
    upd, opt_state = opt.update(g, opt_state, d)
    d = optax.apply_updates(d, upd)
    max_norm = hp.clamp_norm_factor * v0_norm
    nrm = jnp.linalg.norm(d)
    d = jnp.where(nrm > max_norm, d * (max_norm / jnp.maximum(nrm, 1e-12)), d)
    return d, opt_state, (loss,) + aux


@functools.partial(jax.jit, static_argnames=("cfg", "start", "site"))
def _site_and_ref(sub, st, b, *, cfg, start, site):
    """Unperturbed site activation [B, D] and key [B, F] at the subject's last token, and
    the final log-probs [B, V] at the first target position."""
    d = jnp.zeros((cfg.d_model,), jnp.float32)
    lp, act, key = _tail_logprobs(d, sub, st, b, cfg, start, site, with_key=True)
    return act, key, lp[:, 0]


@dataclasses.dataclass
class DeltaResult:
    """delta* [D] and what it was measured against.

    Attributes:
        delta: the optimised vector (float64 numpy).
        v0: mean unperturbed activation at (site, layer) over the rewrite prompts.
        keys: [n_contexts, F] keys ("mlp_hidden" of the block, at the subject's last
            token) of the unedited rows, one per context (row 0: the bare prompt).
        nll: target NLL per step; p_target: final mean P(target) over rewrite prompts.
        steps: Adam steps taken.
    """

    delta: np.ndarray
    v0: np.ndarray
    keys: np.ndarray
    nll: list[float]
    kl: float
    p_target: float
    steps: int


def optimize_delta(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    request: EditRequest,
    contexts: Sequence[str],
    *,
    layer: int,
    site: str,
    hp: ValueConfig,
) -> DeltaResult:
    """Optimises the vector added at ``site`` ("mlp_out" for ROME, "resid_post" for MEMIT)
    of block ``layer`` at the subject's last token so the model predicts ``target_new``."""
    if site not in ("mlp_out", "resid_post"):
        raise ValueError(f"site must be 'mlp_out' or 'resid_post', got {site!r}")
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} out of range for a {cfg.n_layers}-layer model")
    batch = build_delta_batch(tok, request, contexts, hp)
    b = {k: jnp.asarray(v) for k, v in dataclasses.asdict(batch).items()}
    lens = (batch.positions >= 0).sum(1)
    tail_len = int((lens - batch.subj).max())  # 3 for "... {} is" with a one-token target
    b["pred_tail"] = jnp.asarray(batch.pred - batch.subj[:, None])
    params = stack_layers(params)  # once per call (no copy when the caller's are stacked)
    st = hooks.tail_state(params, cfg, batch.tokens, batch.positions, batch.subj, start=layer,
                          tail_len=tail_len)
    sub = hooks.tail_params(params, layer)
    act, key, ref = _site_and_ref(sub, st, b, cfg=cfg, start=layer, site=site)
    rw = batch.is_rw > 0
    v0 = np.asarray(act, np.float64)[rw].mean(0)
    keys = np.asarray(key, np.float64)[rw]
    v0_norm = jnp.float32(max(np.linalg.norm(v0), 1e-6))
    d = jnp.zeros((cfg.d_model,), jnp.float32)
    opt_state = optax.adam(hp.lr).init(d)
    nlls, kl, p = [], 0.0, 0.0
    steps = 0
    for _ in range(hp.steps):
        d_new, opt_state, (loss, nll, kl, p) = _delta_step(
            d, opt_state, sub, st, b, ref, v0_norm, cfg=cfg, start=layer, site=site, hp=hp
        )
        nlls.append(float(nll))
        if nlls[-1] < hp.stop_nll:
            break  # d (not d_new) achieved this loss
        d = d_new
        steps += 1
    return DeltaResult(
        delta=np.asarray(d, np.float64), v0=v0, keys=keys, nll=nlls, kl=float(kl),
        p_target=float(p),
        steps=steps,
    )
