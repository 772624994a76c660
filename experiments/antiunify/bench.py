r"""Random term pairs with many shared differences, and the linear-time benchmark.

:func:`random_pair` builds two untyped terms ``\x y z. body`` of about ``n`` nodes each.
Both bodies share a random binary ``f``/unary ``g`` skeleton; a third of the leaves
are *differences* ``p_j(u, q(v)) =^= r_j(v, u)`` (sometimes under a local lambda) with
``(u, v)`` a random pair of the bound variables. The pool of difference templates grows
with ``n`` (one template per ~3 uses), so Mer fires often *and* the store grows
linearly: exactly the case where pairwise Mer becomes quadratic.

:func:`run_benchmark` times :func:`pattern_lgg` (bucketed and naive Mer) over a size
sweep and fits log-log slopes; ``experiments/bench_antiunify.py`` and the repro entry
both call it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

import numpy as np

from jaxlm.symbolic import terms as T
from jaxlm.symbolic.antiunify import pattern_lgg
from jaxlm.symbolic.terms import Term

N_BINDERS = 3


def _difference(j: int, u: int, v: int, local: bool) -> tuple[Term, Term]:
    # bound variables u, v are levels 0..2 of the prefix; body depth is N_BINDERS
    def bv(level: int, extra: int) -> Term:
        return T.bvar(N_BINDERS - 1 - level + extra)

    e = 1 if local else 0
    s = T.const(f"p{j}", None, bv(u, e), T.const("q", None, bv(v, e)))
    t = T.const(f"r{j}", None, bv(v, e), bv(u, e))
    if local:  # \w. h(w, diff) on both sides: Abs, then Dec, then the difference
        w = T.bvar(0)
        s = T.mk_abs(None, T.const("h", None, w, s))
        t = T.mk_abs(None, T.const("h", None, w, t))
    return s, t


def random_pair(n: int, seed: int = 0, diff_rate: float = 0.3) -> tuple[Term, Term]:
    """Two untyped closed terms of about ``n`` nodes each (iterative construction).

    Args:
        n: target size of each term (>= 10).
        seed: RNG seed.
        diff_rate: fraction of leaves that are differences.

    Returns:
        ``(s, t)`` sharing a skeleton, with shared differences up to bound-variable
        permutation.
    """
    if n < 10:
        raise ValueError(f"random_pair needs n >= 10, got {n}")
    rng = random.Random(seed)
    # ~ each leaf costs ~1 node (common) or ~4 nodes (difference), plus ~1 internal node
    n_leaves = max(2, int(n / (2 + 3 * diff_rate)))
    n_templates = max(1, int(n_leaves * diff_rate / 3))
    common = [T.bvar(i) for i in range(N_BINDERS)] + [T.const("a"), T.const("b")]
    items: list[tuple[Term, Term]] = []
    for _ in range(n_leaves):
        if rng.random() < diff_rate:
            u, v = rng.sample(range(N_BINDERS), 2)
            items.append(_difference(rng.randrange(n_templates), u, v, rng.random() < 0.2))
        else:
            c = rng.choice(common)
            items.append((c, c))
    while len(items) > 1:
        rng.shuffle(items)
        nxt = []
        for i in range(0, len(items) - 1, 2):
            (s1, t1), (s2, t2) = items[i], items[i + 1]
            nxt.append((T.const("f", None, s1, s2), T.const("f", None, t1, t2)))
        if len(items) % 2:
            s1, t1 = items[-1]
            nxt.append((T.const("g", None, s1), T.const("g", None, t1)))
        items = nxt
    s, t = items[0]
    return T.lams([None] * N_BINDERS, s), T.lams([None] * N_BINDERS, t)


def loglog_slope(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(size)."""
    if len(sizes) < 2:
        return float("nan")
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(times, float))
    return float(np.polyfit(x, y, 1)[0])


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """Median (CPU seconds of this process, wall seconds) after one warm-up call.

    The work is single-threaded pure Python, so process CPU time is the robust measure
    on a shared machine (other jobs inflate wall time); both are reported.
    """
    fn()  # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return float(np.median(cpu)), float(np.median(wall))


def run_benchmark(
    sizes: Sequence[int],
    naive_max: int,
    *,
    repeats: int = 3,
    seed: int = 0,
    parse_size: int | None = None,
    progress=None,
) -> dict:
    """Times pattern AU with hash-bucketed and naive Mer over a size sweep.

    Args:
        sizes: term sizes n (nodes per input).
        naive_max: the naive Mer runs only for ``n <= naive_max``.
        repeats: timed repeats per point (median after one warm-up).
        seed: RNG seed for the pairs.
        parse_size: if set, also time parse + print + AU on a pair of this size.
        progress: optional tqdm-like factory ``progress(total, desc)``.

    Returns:
        dict with per-size rows and the fitted slopes.
    """
    from jaxlm.symbolic.syntax import parse, show

    rows = []
    bar = progress(len(sizes), "AU sweep") if progress else None
    for n in sizes:
        s, t = random_pair(n, seed=seed + n)
        res = pattern_lgg(s, t)
        if not res.justify(s, t):
            raise AssertionError(f"justification failed at n={n}")
        reps = repeats if n <= 30_000 else max(1, repeats - 1)
        tb, tbw = _median_time(lambda: pattern_lgg(s, t, mer="bucket"), reps)
        row = {
            "n": s.size,
            "pair_nodes": s.size + t.size,
            "differences": res.stats["sol"],
            "store": len(res.store),
            "mer": res.stats["mer"],
            "bucket_s": tb,
            "bucket_wall_s": tbw,
        }
        if n <= naive_max:
            rn = pattern_lgg(s, t, mer="naive")
            assert rn.lgg is res.lgg, "naive and bucketed Mer disagree"
            row["naive_s"], row["naive_wall_s"] = _median_time(
                lambda: pattern_lgg(s, t, mer="naive"), max(1, reps - 1)
            )
            row["naive_comparisons"] = rn.stats["comparisons"]
        rows.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    ns = [r["n"] for r in rows]
    out = {
        "rows": rows,
        "slope_bucket": loglog_slope(ns, [r["bucket_s"] for r in rows]),
        "slope_bucket_ge_1e3": loglog_slope(
            [r["n"] for r in rows if r["n"] >= 1000],
            [r["bucket_s"] for r in rows if r["n"] >= 1000],
        ),
    }
    nrows = [r for r in rows if "naive_s" in r]
    out["slope_naive"] = loglog_slope([r["n"] for r in nrows], [r["naive_s"] for r in nrows])
    out["naive_sizes"] = [r["n"] for r in nrows]
    top = [r for r in nrows if r["n"] * 10 >= nrows[-1]["n"]] if nrows else []
    out["slope_naive_top_decade"] = loglog_slope([r["n"] for r in top], [r["naive_s"] for r in top])
    if parse_size:
        s, t = random_pair(parse_size, seed=seed + 7)
        ts, tt = show(s), show(t)
        w0, c0 = time.perf_counter(), time.process_time()
        ps, pt = parse(ts), parse(tt)
        w1, c1 = time.perf_counter(), time.process_time()
        res = pattern_lgg(ps, pt)
        w2, c2 = time.perf_counter(), time.process_time()
        assert ps is s and pt is t and res.justify(s, t)
        out["parse_au"] = {
            "n": s.size,
            "parse_s": c1 - c0,
            "au_s": c2 - c1,
            "total_s": c2 - c0,
            "total_wall_s": w2 - w0,
        }
    out["clock"] = "process CPU time (median); *_wall_s = wall clock"
    return out


def slope_plot(result: dict, path: str) -> str:
    """Log-log plot of time vs size for bucketed and naive Mer (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ns = [r["n"] for r in rows]
    lab = f"bucketed Mer (slope {result['slope_bucket']:.2f})"
    ax.loglog(ns, [r["bucket_s"] for r in rows], "o-", label=lab)
    nr = [r for r in rows if "naive_s" in r]
    if nr:
        ax.loglog(
            [r["n"] for r in nr],
            [r["naive_s"] for r in nr],
            "s--",
            label=f"naive pairwise Mer (slope {result['slope_naive']:.2f})",
        )
    lo, hi = min(ns), max(ns)
    t0 = rows[-1]["bucket_s"]
    ax.loglog([lo, hi], [t0 * lo / hi, t0], ":", color="gray", label="slope 1 reference")
    ax.set_xlabel("nodes per input term")
    ax.set_ylabel("CPU seconds (median)")
    ax.set_title("Pattern anti-unification: time vs size")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def geometric_sizes(lo: int, hi: int, per_decade: int = 2) -> list[int]:
    """Sizes lo..hi spaced geometrically (``per_decade`` points per factor 10)."""
    k = int(round(math.log10(hi / lo) * per_decade))
    return sorted({int(round(lo * (hi / lo) ** (i / k))) for i in range(k + 1)})


# ----------------------------------------------------------------- presets
import dataclasses  # noqa: E402

from jaxlm.utils.config import Registry  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Linear-time benchmark sweep.

    Attributes:
        lo, hi: smallest / largest term size (nodes per input).
        per_decade: sizes per factor 10.
        naive_max: the quadratic naive Mer runs only up to this size.
        repeats: timed repeats (median) per size.
        parse_size: size of the pair for the parse + AU timing (0: skip).
    """

    lo: int = 100
    hi: int = 100_000
    per_decade: int = 2
    naive_max: int = 100_000
    repeats: int = 3
    parse_size: int = 100_000


BENCH_PRESETS: Registry[BenchConfig] = Registry("antiunify bench")
BENCH_PRESETS.add("full", BenchConfig())
BENCH_PRESETS.add("quick", BenchConfig(naive_max=31_623, repeats=2))
BENCH_PRESETS.add("full_test", BenchConfig(hi=1_000, naive_max=1_000, repeats=1, parse_size=1_000))
BENCH_PRESETS.add("quick_test", BenchConfig(hi=1_000, naive_max=1_000, repeats=1, parse_size=0))


def bench_targets(result: dict) -> list:
    """The issue's targets, computed from a :func:`run_benchmark` result."""
    from jaxlm.utils.bench import Target

    out = [
        Target("BKLV bucketed Mer log-log slope (1e2..1e5 nodes)",
               result["slope_bucket"], 1.15, "<="),
        Target("naive pairwise Mer slope, all sizes it ran (superlinear)",
               result["slope_naive"], 1.3, ">="),
        Target("naive pairwise Mer slope, top decade (quadratic regime)",
               result["slope_naive_top_decade"], 1.6, ">="),
    ]
    if "parse_au" in result:
        p = result["parse_au"]
        name = f"parse + AU of a {p['n']}-node-per-term pair (CPU s)"
        out.append(Target(name, p["total_s"], 5.0, "<="))
    return out


def random_small_pair(rng: random.Random, max_size: int = 12) -> tuple[Term, Term]:
    """Two random typed terms ``\\x y:i. body`` (symbols f:i->i->i, g:i->i, h:(i->i)->i,
    a, b:i) of at most ``max_size`` nodes each: inputs for property checks."""
    i = T.base("i")
    ii = T.arrow(i, i)
    sig = {"f": T.arrow(i, i, i), "g": ii, "h": T.arrow(ii, i)}

    def build(budget: int, depth: int) -> Term:
        r = rng.random()
        if budget <= 1 or r < 0.3:
            choice = rng.randrange(4 + (depth > 2))
            if choice < 2:
                return T.bvar(depth - 1 - choice)
            if choice < 4:
                return T.const("ab"[choice - 2], i)
            return T.bvar(0)
        if r < 0.6 and budget >= 3:
            left = rng.randrange(1, budget - 1)
            return T.const("f", sig["f"], build(left, depth), build(budget - 1 - left, depth))
        if r < 0.85:
            return T.const("g", ii, build(budget - 1, depth))
        return T.const("h", sig["h"], T.mk_abs(i, build(budget - 2, depth + 1)))

    def one() -> Term:
        return T.lams([i, i], build(rng.randrange(1, max_size - 1), 2))

    return one(), one()
