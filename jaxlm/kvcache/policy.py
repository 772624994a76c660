"""KV-cache eviction policies as pure functions over per-row policy parameters.

Every policy shares one interface, split in three pure steps that the prefill
compressor and the decode loop both call:

1. ``increments(probs, ...)``: this step's per-slot score, pooled from query
   heads to KV heads ([L, B, H, S] attention probabilities -> [L, B, K, S]).
2. ``observe(score, written, inc, ...)``: folds the increment into the
   accumulated per-slot score (accumulate for H2O/Keyformer, replace for TOVA,
   keep for position-based and prompt-only policies).
3. ``priority(score, pos, cur_pos, ...)``: a keep-priority per slot. Prefill
   keeps the ``C - 1`` highest (``select``); decode evicts the lowest
   (``choose_slot``) and writes the next token there.

A ``Policy`` is a frozen Python spec; ``resolve_rows`` turns a list of specs
(one per batch row) into ``PolicyParams``, a pytree of per-row arrays. The
policy is therefore *data*, not a static argument: one compiled decode loop
serves every policy, budget fraction and seed with the same cache shape, and
each batch row keeps its own selection (the Keyformer/H2O reference code
shares one mask across the batch; we do not).

Priority tiers (float32, larger = keep):

====================  =========================================================
slot beyond row cap     +3e38   never written, never chosen
protected              +1e38   recent window (w-1 newest + the incoming token), sinks
score / position       finite  H2O, Keyformer, TOVA: accumulated score; window,
                               StreamingLLM, full: original position (oldest goes first)
window-class (frozen)  -1e38   Keyformer ``reference`` and SnapKV: tokens that were
                               not prompt-time key tokens (evicted when they leave the window)
empty                  -2e38   free slots are filled first
====================  =========================================================

Ties inside a tier evict the oldest original position. Protection is applied
after aggregation, so ties can never evict a protected token (kvpress #227).

GQA pooling: scores are **summed** over the query heads of each KV group
(``pool="group"``, Keyformer/H2O/SnapKV); TOVA defaults to the layer-wise mean
over all heads (``pool="layer"``), giving the same selection for every KV head.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

POLICIES = ("full", "window", "streaming", "h2o", "tova", "snapkv", "keyformer", "random")
MODES = ("paper", "reference")
POOLS = ("group", "layer")

# increment kinds
INC_NONE, INC_ATTN, INC_GUMBEL, INC_TOVA = 0, 1, 2, 3
# priority kinds
PRIO_POS, PRIO_SCORE, PRIO_FROZEN, PRIO_RANDOM = 0, 1, 2, 3

KEEP_BEYOND_CAP = 3e38
KEEP_PROTECTED = 1e38
KEEP_WINDOW_CLASS = -1e38
KEEP_EMPTY = -2e38
LOG_ZERO = -1e30  # "log 0" for masked slots: finite, so adding Gumbel noise never makes NaN
MAX_SNAP_KERNEL = 15
NO_FREEZE = 2**30

# per-policy defaults: (recent fraction of C, sinks, pool, increment kind, priority kind)
_DEFAULTS = {
    "full": (0.0, 0, "group", INC_NONE, PRIO_POS),
    "window": (0.0, 0, "group", INC_NONE, PRIO_POS),
    "streaming": (0.0, 4, "group", INC_NONE, PRIO_POS),
    "h2o": (0.5, 0, "group", INC_ATTN, PRIO_SCORE),
    "tova": (0.0, 0, "layer", INC_TOVA, PRIO_SCORE),
    "snapkv": (0.25, 0, "group", INC_NONE, PRIO_FROZEN),
    "keyformer": (0.3, 0, "group", INC_GUMBEL, PRIO_SCORE),
    "random": (0.0, 0, "group", INC_NONE, PRIO_RANDOM),
}


@dataclasses.dataclass(frozen=True)
class Policy:
    """One eviction policy and its budget (a hashable spec; see module docstring).

    Attributes:
        name: one of POLICIES.
        budget: a ``float`` in (0, 1] is a fraction of the prompt length
            (C = floor(budget * P), the reference convention); an ``int`` >= 2 is an
            absolute slot count (clamped to P + max_new_tokens, i.e. no eviction). C counts every retained entry (sinks, window and the
            incoming token) and is constant during decoding. Ignored by ``full``
            (capacity P + max_new_tokens).
        recent: recent-window size w as a fraction of C (w = max(1, floor(recent*C)));
            None = policy default (Keyformer 0.3, H2O 0.5, SnapKV 0.25, others 1 token).
        window: absolute recent-window size (overrides ``recent``).
        sinks: protected first tokens (StreamingLLM default 4).
        mode: Keyformer ``paper`` (tokens leaving the window compete for key slots)
            or ``reference`` (key set frozen after the prompt, as the authors' code).
        tau_init, tau_end: Keyformer temperature, annealed linearly over the
            generated tokens (tau_t = tau_init + t (tau_end - tau_init) / T_max).
        noise: Keyformer Gumbel noise on (False = the tau schedule only).
        seed: Gumbel / random-eviction seed.
        pool: GQA pooling ``group`` (sum over the query heads of a KV group) or
            ``layer`` (mean over all heads; one selection per layer).
        snap_kernel: SnapKV average-pool width (odd, <= 15).
    """

    name: str = "full"
    budget: float | int = 1.0
    recent: float | None = None
    window: int | None = None
    sinks: int | None = None
    mode: str = "paper"
    tau_init: float = 1.0
    tau_end: float = 2.0
    noise: bool = True
    seed: int = 0
    pool: str | None = None
    snap_kernel: int = 5

    def __post_init__(self):
        if self.name not in POLICIES:
            raise ValueError(f"Policy.name must be one of {POLICIES}, got {self.name!r}")
        if self.mode not in MODES:
            raise ValueError(f"Policy.mode must be one of {MODES}, got {self.mode!r}")
        if self.pool is not None and self.pool not in POOLS:
            raise ValueError(f"Policy.pool must be one of {POOLS} or None, got {self.pool!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
            raise ValueError(f"Policy.budget must be a float fraction or an int slot count, "
                             f"got {self.budget!r}")
        if isinstance(self.budget, float) and not 0.0 < self.budget <= 1.0:
            raise ValueError(f"Policy.budget as a fraction must be in (0, 1], got {self.budget} "
                             f"(pass an int for an absolute number of slots)")
        if isinstance(self.budget, int) and self.budget < 2:
            raise ValueError(f"Policy.budget as a slot count must be >= 2, got {self.budget}")
        if self.recent is not None and not 0.0 <= self.recent < 1.0:
            raise ValueError(f"Policy.recent must be in [0, 1), got {self.recent}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"Policy.window must be >= 1, got {self.window}")
        if self.sinks is not None and self.sinks < 0:
            raise ValueError(f"Policy.sinks must be >= 0, got {self.sinks}")
        if self.tau_init <= 0 or self.tau_end <= 0:
            raise ValueError(f"Keyformer temperatures must be > 0, got tau_init={self.tau_init}, "
                             f"tau_end={self.tau_end}")
        if self.snap_kernel < 1 or self.snap_kernel % 2 == 0 or self.snap_kernel > MAX_SNAP_KERNEL:
            raise ValueError(f"Policy.snap_kernel must be odd in [1, {MAX_SNAP_KERNEL}], "
                             f"got {self.snap_kernel}")

    @property
    def label(self) -> str:
        """A short name for tables, e.g. ``keyformer-paper@50%``."""
        name = self.name
        if self.name == "keyformer":
            name += f"-{self.mode}" + ("" if self.noise else "-nonoise")
        if self.name == "full":
            return name
        b = f"{self.budget:.0%}" if isinstance(self.budget, float) else f"{self.budget}slots"
        return f"{name}@{b}"

    def capacity(self, prompt_len: int, max_new_tokens: int) -> int:
        """C in slots for a prompt of ``prompt_len`` tokens."""
        if self.name == "full":
            return prompt_len + max_new_tokens
        if isinstance(self.budget, float):
            return int(math.floor(self.budget * prompt_len))
        # an absolute budget covering a row's whole sequence means no eviction for that row
        return min(int(self.budget), prompt_len + max_new_tokens)

    def sizes(self, prompt_len: int, max_new_tokens: int) -> tuple[int, int, int]:
        """(C, w, sinks) for a prompt of ``prompt_len`` tokens, validated."""
        recent, sinks, _, _, _ = _DEFAULTS[self.name]
        cap = self.capacity(prompt_len, max_new_tokens)
        s = self.sinks if self.sinks is not None else sinks
        if self.window is not None:
            w = self.window
        else:
            w = max(1, int(math.floor((self.recent if self.recent is not None else recent) * cap)))
        if cap < w + s + 1:
            raise ValueError(
                f"{self.label}: budget C={cap} slots (prompt {prompt_len}) leaves no evictable "
                f"slot after the recent window w={w} and {s} sinks; need C >= w + sinks + 1. "
                f"Raise the budget or lower recent/sinks")
        return cap, w, s


@struct.dataclass
class PolicyParams:
    """Per-row policy parameters (all arrays of shape [B]); built by ``resolve_rows``."""

    inc_kind: Array
    prio_kind: Array
    cap: Array
    window: Array
    sinks: Array
    frozen_from: Array
    tau_init: Array
    tau_end: Array
    t_max: Array
    noise: Array
    layer_pool: Array
    seed: Array
    seed_idx: Array
    snap_rows: Array
    snap_kernel: Array


def resolve_rows(
    policies: Sequence[Policy],
    prompt_lens: Sequence[int],
    max_new_tokens: int,
    variants: Sequence[tuple[int, float, bool]] = (),
) -> PolicyParams:
    """Per-row parameters for ``policies[i]`` applied to a prompt of ``prompt_lens[i]`` tokens.

    Args:
        policies: one Policy per batch row.
        prompt_lens: real prompt length of each row.
        max_new_tokens: T_max (Keyformer's tau schedule and the full-cache capacity).
        variants: the Keyformer prompt-score variants (seed, tau_init, noise) the
            prefill computed (``keyformer_variants``); each Keyformer row must be among them.

    Returns:
        PolicyParams with [B] arrays.
    """
    if len(policies) != len(prompt_lens):
        raise ValueError(f"resolve_rows: {len(policies)} policies for {len(prompt_lens)} rows")
    cols: dict[str, list] = {f.name: [] for f in dataclasses.fields(PolicyParams)}
    for pol, plen in zip(policies, prompt_lens, strict=True):
        if plen < 1:
            raise ValueError(f"resolve_rows: prompt length must be >= 1, got {plen}")
        cap, w, s = pol.sizes(int(plen), max_new_tokens)
        _, _, pool, inc, prio = _DEFAULTS[pol.name]
        pool = pol.pool or pool
        if pol.name == "keyformer" and pol.mode == "reference":
            prio = PRIO_FROZEN
        var = (int(pol.seed), float(pol.tau_init), bool(pol.noise))
        variants = [(int(a), float(b), bool(c)) for a, b, c in variants]
        if pol.name == "keyformer" and var not in variants:
            raise ValueError(f"{pol.label}: prompt-time Gumbel variant (seed, tau_init, noise)="
                             f"{var} was not computed at prefill (have {variants})")
        cols["inc_kind"].append(inc)
        cols["prio_kind"].append(prio)
        cols["cap"].append(cap)
        cols["window"].append(w)
        cols["sinks"].append(s)
        # Keyformer reference: candidates stop at n - w (the authors' [:, :-w]); SnapKV: the
        # observation window (the last w - 1 prompt tokens) is kept, the rest competes once.
        frozen = NO_FREEZE
        if prio == PRIO_FROZEN:
            frozen = plen - w if pol.name == "keyformer" else plen + 1 - w
        cols["frozen_from"].append(frozen)
        cols["tau_init"].append(pol.tau_init)
        cols["tau_end"].append(pol.tau_end)
        cols["t_max"].append(max(1, max_new_tokens))
        cols["noise"].append(bool(pol.noise and pol.name == "keyformer"))
        cols["layer_pool"].append(pool == "layer")
        cols["seed"].append(pol.seed)
        cols["seed_idx"].append(variants.index(var) if var in variants else 0)
        cols["snap_rows"].append(max(1, w - 1))
        cols["snap_kernel"].append(pol.snap_kernel)
    dtypes = {"tau_init": np.float32, "tau_end": np.float32, "t_max": np.float32,
              "noise": bool, "layer_pool": bool}
    return PolicyParams(**{k: jnp.asarray(np.asarray(v, dtypes.get(k, np.int32)))
                           for k, v in cols.items()})


# --------------------------------------------------------------------------- pure steps
def _rows(x: Array, ndim: int) -> Array:
    """[B] per-row parameter -> broadcastable against [L, B, ...] of rank ``ndim``."""
    return x.reshape((1, -1) + (1,) * (ndim - 2))


def pool_heads(x: Array, n_kv: int, layer_pool: Array) -> Array:
    """Pools query-head scores to KV heads.

    Args:
        x: [L, B, H, S] per-query-head scores.
        n_kv: number of KV heads K (H must be a multiple).
        layer_pool: [B] bool; True = mean over all H heads (same for every KV head),
            False = sum over the H/K query heads of each group.

    Returns:
        [L, B, K, S].
    """
    l, b, h, s = x.shape
    if h % n_kv:
        raise ValueError(f"pool_heads: {h} query heads is not a multiple of {n_kv} KV heads")
    group = x.reshape(l, b, n_kv, h // n_kv, s).sum(axis=3)
    layer = jnp.broadcast_to(x.mean(axis=2, keepdims=True), (l, b, n_kv, s))
    return jnp.where(_rows(layer_pool, 4), layer, group)


def gumbel_softmax(probs: Array, tau: Array, noise: Array, key_rows: Array) -> Array:
    """Keyformer's score softmax((x + zeta) / tau) over the key axis, from probabilities.

    log p = x - logsumexp(x), and the softmax is shift-invariant, so the Gumbel
    softmax of the attention logits equals that of log-probabilities. Slots with
    p == 0 (masked) get a large finite negative, never -inf (no NaN with noise).

    Args:
        probs: [..., B, H, Q, S] or [L, B, H, S] attention probabilities (batch axis 1).
        tau: [B] temperatures.
        noise: [B] bool; False = no Gumbel noise (the tau schedule alone).
        key_rows: [B] PRNG keys (one stream per row).

    Returns:
        same shape as ``probs``.
    """
    x = jnp.where(probs > 0, jnp.log(jnp.maximum(probs, 1e-38)), LOG_ZERO)
    shape = probs.shape[:1] + probs.shape[2:]
    zeta = jax.vmap(lambda k: jax.random.gumbel(k, shape, jnp.float32))(key_rows)  # [B, ...]
    zeta = jnp.moveaxis(zeta, 0, 1)
    nd = probs.ndim
    zeta = jnp.where(_rows(noise, nd), zeta, 0.0)
    return jax.nn.softmax((x + zeta) / _rows(tau, nd), axis=-1)


def tau_at(pp: PolicyParams, step: Array) -> Array:
    """Keyformer temperature per row at generation step ``step`` (0 = the prompt)."""
    frac = jnp.minimum(step.astype(jnp.float32) / pp.t_max, 1.0)
    return pp.tau_init + frac * (pp.tau_end - pp.tau_init)


def row_keys(pp: PolicyParams, step: Array, salt: int) -> Array:
    """One PRNG key per row for ``step`` (deterministic in (seed, step, salt))."""
    def one(seed):
        k = jax.random.fold_in(jax.random.PRNGKey(seed), salt)
        return jax.random.fold_in(k, step)
    return jax.vmap(one)(pp.seed)


def increments(probs: Array, pp: PolicyParams, n_kv: int, step: Array) -> Array:
    """This decode step's per-slot score increment, [L, B, H, S] -> [L, B, K, S].

    H2O: attention probabilities; Keyformer: Gumbel softmax at tau_t; TOVA: the
    current attention (replaces the score in ``observe``); others: zero. The
    Gumbel branch only runs when some row needs it (``lax.cond``).
    """
    inc_kind = _rows(pp.inc_kind, 4)
    attn = pool_heads(probs, n_kv, pp.layer_pool)

    def gumbel():
        g = gumbel_softmax(probs, tau_at(pp, step), pp.noise, row_keys(pp, step, 1))
        return pool_heads(g, n_kv, pp.layer_pool)

    gum = jax.lax.cond(jnp.any(pp.inc_kind == INC_GUMBEL), gumbel, lambda: jnp.zeros_like(attn))
    return jnp.where(inc_kind == INC_GUMBEL, gum, jnp.where(inc_kind == INC_NONE, 0.0, attn))


def observe(score: Array, written: Array, inc: Array, pp: PolicyParams) -> Array:
    """Folds a step's increment into the accumulated score [L, B, K, S].

    ``written`` [L, B, K, S] marks the slot that received the new token: its old
    score (of the evicted token) is reset to 0 before accumulating.
    """
    inc_kind = _rows(pp.inc_kind, 4)
    score = jnp.where(written, 0.0, score)
    return jnp.where(inc_kind == INC_TOVA, inc, score + inc)


def priority(
    score: Array,
    pos: Array,
    cur_pos: Array,
    pp: PolicyParams,
    rand: Array | None = None,
    *,
    use_cap: bool = True,
) -> Array:
    """Keep-priority per slot (see the tier table in the module docstring).

    Args:
        score: [L, B, K, S] accumulated scores.
        pos: [L, B, K, S] original positions (-1 = empty).
        cur_pos: [B] position of the newest token in the cache; the next token gets
            cur_pos + 1 and the protected window is pos >= cur_pos + 2 - w.
        pp: per-row PolicyParams.
        rand: [L, B, K, S] uniform numbers for the ``random`` policy.
        use_cap: mark slots >= the row's C as never usable (decode cache).

    Returns:
        [L, B, K, S] float32; evict the lowest, keep the highest.
    """
    kind = _rows(pp.prio_kind, 4)
    posf = pos.astype(jnp.float32)
    frozen = jnp.where(pos >= _rows(pp.frozen_from, 4), KEEP_WINDOW_CLASS, score)
    base = jnp.where(kind == PRIO_POS, posf, jnp.where(kind == PRIO_FROZEN, frozen, score))
    if rand is not None:
        base = jnp.where(kind == PRIO_RANDOM, rand, base)
    protected = (pos >= _rows(cur_pos, 4) + 2 - _rows(pp.window, 4)) | (pos < _rows(pp.sinks, 4))
    base = jnp.where(protected, KEEP_PROTECTED, base)
    base = jnp.where(pos < 0, KEEP_EMPTY, base)
    if use_cap:
        slot = jnp.arange(pos.shape[-1], dtype=jnp.int32)
        base = jnp.where(slot >= _rows(pp.cap, 4), KEEP_BEYOND_CAP, base)
    return base


def choose_slot(prio: Array, pos: Array) -> Array:
    """The slot to overwrite next, [L, B, K]: lowest priority, oldest position on ties."""
    low = prio.min(axis=-1, keepdims=True)
    tie = jnp.where(prio == low, pos, jnp.iinfo(jnp.int32).max)
    return jnp.argmin(tie, axis=-1).astype(jnp.int32)


def select(prio: Array, pos: Array, keep: Array, n_out: int) -> tuple[Array, Array]:
    """Prefill selection: the ``keep`` [B] highest-priority slots per (layer, row, KV head).

    Args:
        prio: [L, B, K, S0] priorities (``priority(..., use_cap=False)``).
        pos: [L, B, K, S0] positions.
        keep: [B] how many entries to keep (C - 1: the last slot takes the next token).
        n_out: static number of output slots (>= max keep).

    Returns:
        (idx [L, B, K, n_out] source slots, valid [L, B, K, n_out] bool). Ties keep
        the newest token, the complement of ``choose_slot``'s oldest-first rule.
    """
    s0 = prio.shape[-1]
    k = min(n_out, s0)
    # one lexicographic sort on (-priority, -position)
    iota = jnp.broadcast_to(jnp.arange(s0, dtype=jnp.int32), prio.shape)
    _, _, idx = jax.lax.sort((-prio, -pos, iota), dimension=prio.ndim - 1, num_keys=2)
    idx = idx[..., :k]
    rank = jnp.arange(k, dtype=jnp.int32)
    valid = rank < _rows(keep, 4)
    valid = valid & (jnp.take_along_axis(pos, idx, axis=-1) >= 0)
    if n_out > k:
        pad = n_out - k
        idx = jnp.concatenate([idx, jnp.zeros(idx.shape[:-1] + (pad,), idx.dtype)], axis=-1)
        valid = jnp.concatenate([valid, jnp.zeros(valid.shape[:-1] + (pad,), bool)], axis=-1)
    return idx, valid


def snap_scores(obs: Array, pp: PolicyParams) -> Array:
    """SnapKV prompt score from the last observation rows, average-pooled along keys.

    Args:
        obs: [L, B, K, W, S] attention of the last W prompt queries (group-pooled).
        pp: rows' ``snap_rows`` (alpha <= W) and ``snap_kernel``.

    Returns:
        [L, B, K, S]: sum over the last alpha rows, then a centred mean over
        ``snap_kernel`` neighbouring slots (zero padded, like avg_pool1d with padding).
    """
    w = obs.shape[3]
    row = jnp.arange(w)
    use = row[None, :] >= (w - pp.snap_rows)[:, None]  # [B, W]
    s = jnp.einsum("lbkws,bw->lbks", obs, use.astype(obs.dtype))
    n = s.shape[-1]
    half = MAX_SNAP_KERNEL // 2
    # box filter via a prefix sum: out[i] = cs[i + h + 1] - cs[i - h], h = kernel // 2 per row
    cs = jnp.pad(jnp.cumsum(s, axis=-1), ((0, 0), (0, 0), (0, 0), (half + 1, 0)))
    cs = jnp.pad(cs, ((0, 0), (0, 0), (0, 0), (0, half)), mode="edge")
    h = _rows(pp.snap_kernel // 2, 4)
    i = jnp.arange(n)
    hi = jnp.broadcast_to(i + half + 1 + h, s.shape)
    lo = jnp.broadcast_to(i + half - h, s.shape)
    out = jnp.take_along_axis(cs, hi, axis=-1) - jnp.take_along_axis(cs, lo, axis=-1)
    return out / _rows(pp.snap_kernel.astype(s.dtype), 4)


def keyformer_variants(policies: Sequence[Policy]) -> tuple[tuple[int, float, bool], ...]:
    """The distinct (seed, tau_init, noise) prompt-score variants Keyformer rows need."""
    out: list[tuple[int, float, bool]] = []
    for p in policies:
        v = (int(p.seed), float(p.tau_init), bool(p.noise))
        if p.name == "keyformer" and v not in out:
            out.append(v)
    return tuple(out)
