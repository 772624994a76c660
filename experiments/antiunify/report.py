"""Checks shared by the ``antiunify`` experiment and its reproduction entry."""

from __future__ import annotations

import random

from jaxlm.symbolic import matching as M
from jaxlm.symbolic import nested as N
from jaxlm.symbolic import terms as T
from jaxlm.symbolic.antiunify import fo_lgg, pattern_lgg
from experiments.antiunify.bench import random_small_pair
from jaxlm.symbolic.syntax import parse, show

# The nine golden rows of the spec (inputs from the RISC HOAU tool page).
GOLDEN = [
    (r"\x.f(x,x)", r"\x.f(a,x)", r"\x.f(X(x), x)"),
    (r"\x.f(b,x)", r"\x.f(a,x)", r"\x.f(X, x)"),
    (r"\x,y.f(f(g(x),y),f(g(y),x))", r"\x,y.f(h(y,g(x)),h(x,g(y)))", r"\x,y.f(X(x,y), X(y,x))"),
    (r"\x,y.f(x,y)", r"\x,y.f(y,x)", r"\x,y.f(X(x,y), X(y,x))"),
    (
        r"\x,y,z.g(f(x,z),f(y,z),f(y,x))",
        r"\x,y,z.g(h(y,x),h(x,y),h(z,y))",
        r"\x,y,z.g(X(x,y,z), X(y,x,z), X(y,z,x))",
    ),
    (r"\x,y.f(\z.g(z,y),g(x,y))", r"\x,y.f(\z.h(y,z),h(y,x))", r"\x,y.f(\z.X(y,z), X(y,x))"),
    (r"\x.f(\y.g(x,y),\y.g(y,x))", r"\x.f(\y.h(x,y,x),\y.h(y,x,y))", r"\x.f(\y.X(x,y), \y.X(y,x))"),
    (r"\x.x", r"\x.c", r"\x.X(x)"),
    ("f(a,g(a))", "f(b,g(b))", "f(X, g(X))"),
]


def golden_rows() -> list[dict]:
    """One row per golden case: lgg, justification, match with the expected lgg."""
    rows = []
    for i, (s_txt, t_txt, want_txt) in enumerate(GOLDEN, 1):
        s, t, want = parse(s_txt), parse(t_txt), parse(want_txt)
        res = pattern_lgg(s, t)
        naive = pattern_lgg(s, t, mer="naive")
        ok = res.justify(s, t) and M.equivalent(res.lgg, want) and naive.lgg is res.lgg
        if i == 9:
            ok = ok and fo_lgg(s, t).lgg is res.lgg
        rows.append(
            {
                "#": i,
                "s =^= t": f"`{show(s)}` =^= `{show(t)}`",
                "pattern lgg": f"`{show(res.lgg)}`",
                "Mer steps": res.stats["mer"],
                "justified + matches spec": "yes" if ok else "NO",
            }
        )
    return rows


def property_checks(n_pairs: int, seed: int, lgg_bound: int = 4, n_lgg: int = 30) -> dict:
    """Pass rates on random typed pairs: soundness, symmetry, idempotence, and least
    generality among pattern generalizations up to ``lgg_bound`` symbols."""
    rng = random.Random(seed)
    ok = {"soundness": 0, "symmetry": 0, "idempotence": 0, "least_general": 0}
    checked_gens = 0
    for k in range(n_pairs):
        s, t = random_small_pair(rng)
        res = pattern_lgg(s, t)
        ok["soundness"] += res.justify(s, t) and T.is_pattern(res.lgg)
        ok["symmetry"] += M.equivalent(res.lgg, pattern_lgg(t, s).lgg)
        ok["idempotence"] += pattern_lgg(s, s).lgg is s and M.equivalent(
            pattern_lgg(res.lgg, s).lgg, res.lgg
        )
        if k < n_lgg:
            try:
                en = N.enumerate_generalizations(
                    s, t, lgg_bound, max_arity=2, patterns_only=True, compute_order=False
                )
            except ValueError:  # inner lambdas: outside the enumeration fragment
                ok["least_general"] += 1
                continue
            checked_gens += len(en.generalizations)
            ok["least_general"] += all(
                M.match_pattern(g, res.lgg) is not None for g in en.generalizations
            )
    denom = {k: n_pairs for k in ok} | {"least_general": min(n_pairs, n_lgg)}
    rates = {k: v / denom[k] for k, v in ok.items()}
    rates["pattern_generalizations_checked"] = checked_gens
    return rates


def chain_rows(n_show: Sequence[int] = (1, 2, 4, 8)) -> list[dict]:
    """G_n, its instantiating substitutions, and checks."""
    s, t = N.chain_problem()
    sig_s, sig_t = N.chain_substitutions()
    rows = []
    for n in n_show:
        g = N.nested_chain(n)
        rows.append(
            {
                "n": n,
                "G_n": f"`{show(g)}`",
                "sigma_s": f"X := `{show(sig_s['X'])}`",
                "sigma_t": f"X := `{show(sig_t['X'])}`",
                "G_n sigma = s, t": "yes"
                if T.subst(g, sig_s) is s and T.subst(g, sig_t) is t
                else "NO",
                "pattern": "yes" if T.is_pattern(g) else "no",
            }
        )
    return rows


def order_matrix_text(order: list[list[bool]]) -> str:
    """The G_m <= G_n matrix as text (rows m, columns n)."""
    n = len(order)
    lines = ["m\\n " + " ".join(f"{j:>2}" for j in range(1, n + 1))]
    for i, row in enumerate(order, 1):
        lines.append(f"{i:>3} " + " ".join(" #" if v else " ." for v in row))
    return "\n".join(lines)


from collections.abc import Sequence  # noqa: E402
