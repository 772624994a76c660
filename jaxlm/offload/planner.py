"""Partition planner: contiguous cut points minimising the predicted swap-step time.

Objective (spec section 4.3, with measured or analytic per-layer times)::

    T(cuts) = H_1 + sum_k max(Cf_k, H_{k+1}) + sum_k max(Cb_k, IO_k) + D_1
    IO_k = max(H_{k-1}, D_{k+1}) if copy_engines >= 2 else H_{k-1} + D_{k+1}

Memory (double buffering in both directions; boundary activations stay on the device)::

    mem_k = W_k + G_k + Work_k + max(W_{k-1}, W_{k+1}) + stash  <=  cap

where ``stash`` is the sum of all boundary activations (an upper bound on what the
forward keeps for backward). Sub-model k's term couples k-1, k and k+1, so the exact
solver is a DP over the last *two* sub-models: O(n^4) in the number of layers n
(n <= 60 plans in about a second). ``method="uniform"`` is the cheap heuristic:
every "k blocks per sub-model" split, embedding with the first and head with the last.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from jaxlm.offload.netsim import submodel_costs
from jaxlm.offload.profile import ModelProfile, ProfileError

MB = 2**20


class PlanError(ValueError):
    """No feasible plan (e.g. the memory cap is below what one layer needs)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """A partition and its predicted costs (seconds, bytes)."""

    cuts: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]
    names: tuple[tuple[str, ...], ...]
    predicted_time: float
    compute_time: float
    overlap: float  # compute / predicted (eta_swap)
    peak_mem: int
    mem: tuple[int, ...]
    method: str

    def describe(self) -> str:
        """A human-readable plan table."""
        lines = [f"plan ({self.method}): {len(self.ranges)} sub-models, predicted step "
                 f"{self.predicted_time * 1e3:.3f} ms, compute {self.compute_time * 1e3:.3f} ms, "
                 f"overlap (eta_swap) {self.overlap:.3f}, peak device memory "
                 f"{self.peak_mem / MB:.2f} MB"]
        for k, (names, m) in enumerate(zip(self.names, self.mem)):
            span = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"
            lines.append(f"  sub-model {k}: {span} ({len(names)} layers), mem {m / MB:.2f} MB")
        return "\n".join(lines)


class _Sums:
    def __init__(self, prof: ModelProfile):
        self.n = len(prof.layers)

        def prefix(attr):
            out = [0.0]
            for lp in prof.layers:
                out.append(out[-1] + getattr(lp, attr))
            return out

        self.w = prefix("param_bytes")
        self.g = prefix("grad_bytes")
        self.work = prefix("work_bytes")
        self.cf = prefix("t_fwd")
        self.cb = prefix("t_bwd")
        self.h = prefix("t_h2d")
        self.d = prefix("t_d2h")
        self.stash = sum(lp.act_out_bytes for lp in prof.layers[:-1])
        self.e = prof.copy_engines

    def s(self, arr, a, b):
        return arr[b] - arr[a] if a is not None and a >= 0 else 0.0

    def mem(self, prev, cur, nxt):
        a, b = cur
        nb = max(self.s(self.w, *prev) if prev else 0.0, self.s(self.w, *nxt) if nxt else 0.0)
        return self.s(self.w, a, b) + self.s(self.g, a, b) + self.s(self.work, a, b) + nb \
            + self.stash

    def term(self, prev, cur, nxt):
        cf = self.s(self.cf, *cur)
        cb = self.s(self.cb, *cur)
        h_next = self.s(self.h, *nxt) if nxt else 0.0
        h_prev = self.s(self.h, *prev) if prev else 0.0
        d_next = self.s(self.d, *nxt) if nxt else 0.0
        io = max(h_prev, d_next) if self.e >= 2 else h_prev + d_next
        return max(cf, h_next) + max(cb, io)


def min_memory(prof: ModelProfile) -> tuple[int, str]:
    """(bytes, layer name): the smallest cap any plan can meet (one layer per sub-model)."""
    prof.validate()
    s = _Sums(prof)
    best, name = 0.0, prof.layers[0].name
    for i in range(s.n):
        prev = (i - 1, i) if i > 0 else None
        nxt = (i + 1, i + 2) if i + 1 < s.n else None
        m = s.mem(prev, (i, i + 1), nxt)
        if m > best:
            best, name = m, prof.layers[i].name
    return int(best), name


def evaluate(prof: ModelProfile, cuts: Sequence[int], method: str = "given") -> Plan:
    """Predicted time and memory of a given partition."""
    prof.validate()
    s = _Sums(prof)
    bounds = [0, *cuts, s.n]
    rng = list(zip(bounds[:-1], bounds[1:]))
    if any(b <= a for a, b in rng):
        raise ValueError(f"cuts {list(cuts)} must be strictly increasing inside (0, {s.n})")
    cf = [s.s(s.cf, a, b) for a, b in rng]
    cb = [s.s(s.cb, a, b) for a, b in rng]
    h = [s.s(s.h, a, b) for a, b in rng]
    d = [s.s(s.d, a, b) for a, b in rng]
    tf, tb = submodel_costs(cf, h, d, copy_engines=s.e, bwd_compute=cb)
    mem = [int(s.mem(rng[k - 1] if k else None, rng[k], rng[k + 1] if k + 1 < len(rng) else None))
           for k in range(len(rng))]
    comp = sum(cf) + sum(cb)
    names = tuple(tuple(lp.name for lp in prof.layers[a:b]) for a, b in rng)
    t = tf + tb
    return Plan(tuple(cuts), tuple(rng), names, t, comp, comp / t if t > 0 else 1.0, max(mem),
                tuple(mem), method)


def plan(prof: ModelProfile, memory_cap: float, method: str = "dp") -> Plan:
    """Best contiguous partition under ``memory_cap`` bytes.

    Args:
        prof: a layer profile (``profile.profile_model`` or ``ModelProfile.from_json``).
        memory_cap: device bytes available to the swap executor.
        method: "dp" (exact), "exhaustive" (all 2^(n-1) cut sets; small n only) or
            "uniform" (the k-blocks-per-sub-model heuristic).

    Returns:
        The Plan with the smallest predicted time.

    Raises:
        ProfileError: inconsistent profile. PlanError: no feasible plan (the message names
        the minimum cap).
    """
    if not isinstance(prof, ModelProfile):
        raise ProfileError(f"plan: expected a ModelProfile, got {type(prof).__name__}")
    prof.validate()
    if not memory_cap > 0:
        raise ValueError(f"memory_cap must be > 0 bytes, got {memory_cap}")
    need, name = min_memory(prof)
    if memory_cap < need:
        raise PlanError(
            f"memory cap {memory_cap / MB:.2f} MB is smaller than the {need / MB:.2f} MB that the "
            f"largest single stage needs ({name!r}: weights + gradients + workspace, plus the "
            f"double-buffered neighbour and the boundary activations); raise the cap "
            f"(--memory_cap_mb) to at least {need / MB:.2f}")
    s = _Sums(prof)
    n = s.n
    if method == "dp":
        cuts = _dp(s, memory_cap)
    elif method == "exhaustive":
        if n > 22:
            raise ValueError(f"exhaustive search over {n} layers is too large; use method='dp'")
        cuts = _exhaustive(prof, memory_cap)
    elif method == "uniform":
        cuts = _uniform(prof, memory_cap)
    else:
        raise ValueError(f"method must be dp, exhaustive or uniform, got {method!r}")
    if cuts is None:
        raise PlanError(f"no partition fits {memory_cap / MB:.2f} MB with method {method!r}"
                        + ("; try method='dp'" if method == "uniform" else ""))
    return evaluate(prof, cuts, method)


def _dp(s: _Sums, cap: float) -> tuple[int, ...] | None:
    n = s.n
    inf = float("inf")
    # state (a, b, c): previous sub-model [a, b) (a = -1: none), current [b, c).
    # value: cost of H_1 + D_1 + terms of all sub-models before the current one.
    best: dict[tuple[int, int, int], float] = {}
    back: dict[tuple[int, int, int], tuple[int, int, int] | None] = {}
    for c in range(1, n + 1):
        best[(-1, 0, c)] = s.s(s.h, 0, c) + s.s(s.d, 0, c)
        back[(-1, 0, c)] = None
    final_best, final_state = inf, None
    for b in range(0, n):
        for c in range(b + 1, n + 1):
            for a in ([-1] if b == 0 else range(0, b)):
                key = (a, b, c)
                v = best.get(key, inf)
                if v == inf:
                    continue
                prev = (a, b) if a >= 0 else None
                cur = (b, c)
                if c == n:
                    if s.mem(prev, cur, None) <= cap:
                        tot = v + s.term(prev, cur, None)
                        if tot < final_best:
                            final_best, final_state = tot, key
                    continue
                for e in range(c + 1, n + 1):
                    nxt = (c, e)
                    if s.mem(prev, cur, nxt) > cap:
                        continue
                    nv = v + s.term(prev, cur, nxt)
                    nk = (b, c, e)
                    if nv < best.get(nk, inf):
                        best[nk] = nv
                        back[nk] = key
    if final_state is None:
        return None
    cuts = []
    st = final_state
    while st is not None:
        cuts.append(st[1])
        st = back[st]
    return tuple(sorted(c for c in cuts if c > 0))


def _exhaustive(prof: ModelProfile, cap: float) -> tuple[int, ...] | None:
    n = len(prof.layers)
    best, best_cuts = float("inf"), None
    for r in range(n):
        for cuts in itertools.combinations(range(1, n), r):
            p = evaluate(prof, cuts)
            if p.peak_mem <= cap and p.predicted_time < best - 1e-15:
                best, best_cuts = p.predicted_time, cuts
    return best_cuts


def _uniform(prof: ModelProfile, cap: float) -> tuple[int, ...] | None:
    n = len(prof.layers)
    n_blocks = n - 2
    best, best_cuts = float("inf"), None
    for k in range(1, max(n_blocks, 1) + 1):
        # groups of k blocks; the embedding joins the first group, the head the last one
        cuts = tuple(range(1 + k, n - 1, k))
        p = evaluate(prof, cuts, "uniform")
        if p.peak_mem <= cap and p.predicted_time < best:
            best, best_cuts = p.predicted_time, cuts
    return best_cuts
