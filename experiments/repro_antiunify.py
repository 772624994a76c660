"""Reproduction entry `antiunify`: unitary pattern AU vs nullary nested AU.

    python -m experiments.reproduce --only=antiunify --quick

Golden cases + random property checks for the BKLV pattern lgg (unitary), the chain
table for nested variables (our construction, consistent with Cerna & Buran), the
bounded-enumeration table, and the timing slope plot (bucketed vs naive Mer).
"""

from __future__ import annotations

from jaxlm.utils.report import Claim, RunContext, Section, markdown_table

NAME = "antiunify"
TITLE = "Anti-unification of lambda terms: one (patterns, linear time) or nothing (nested)"


def run(ctx: RunContext) -> Section:
    import time

    from jaxlm.symbolic import nested as N
    from experiments.antiunify import report as R
    from experiments.antiunify.bench import geometric_sizes, run_benchmark, slope_plot
    from jaxlm.symbolic.syntax import parse, show

    bar = ctx.bar(5, "steps")
    t0 = time.perf_counter()
    golden = R.golden_rows()
    golden_ok = all(r["justified + matches spec"] == "yes" for r in golden)
    bar.update(1)
    props = R.property_checks(200 if ctx.quick else 1000, ctx.seed, n_lgg=30 if ctx.quick else 150)
    checks = ("soundness", "symmetry", "idempotence", "least_general")
    props_ok = all(props[k] == 1.0 for k in checks)
    bar.update(1)
    chain = N.chain_table(12)
    bar.update(1)
    s, t = N.chain_problem()
    null_k = (4, 7)
    nullc = N.nullarity_check(s, t, *null_k)
    enum_chain = N.enumeration_table(s, t, list(range(2, 6 if ctx.quick else 7)))
    sig = {"f": "i->i->i", "a": "i"}
    enum_g1 = N.enumeration_table(parse(r"\x.f(x,x)", sig), parse(r"\x.f(a,x)", sig), [2, 3, 4])
    bar.update(1)
    sizes = geometric_sizes(100, 100_000, 2)
    bench = run_benchmark(sizes, 31_623 if ctx.quick else 100_000, repeats=2 if ctx.quick else 3,
                          seed=ctx.seed, parse_size=100_000)
    plot = slope_plot(bench, str(ctx.outdir / "antiunify_slope.png"))
    bar.update(1)
    bar.close()

    slope_ok = bench["slope_bucket"] <= 1.15
    naive_ok = bench["slope_naive"] >= 1.3 and bench["slope_naive_top_decade"] >= 1.6
    parse_ok = bench["parse_au"]["total_s"] <= 5.0
    claims = [
        Claim("Cerna & Buran: AU with nested generalization variables is nullary (no minimal "
              "complete set of generalizations exists) under capture-avoiding substitutions",
              measured=False, ci_or_exact=False, own_paper=True, circular=False, holds=None,
              result="A statement about all generalizations (unbounded size); only the bounded "
              "check below is made"),
        Claim(f"bounded part of nullarity for s = \\x.x, t = \\x.c: no generalization with a "
              f"body of <= {null_k[0]} symbols is maximal (each has a strictly less general "
              f"one of <= {null_k[1]} symbols; arity <= 1, nesting allowed)",
              measured=True, ci_or_exact=True, own_paper=True, circular=False, headline=False,
              holds=nullc.holds,
              result=f"exhaustive enumeration + bounded second-order matching: "
              f"{nullc.statement()}; no maximal element means no minimal complete set"),
        Claim("our construction (not the paper's witness): for s = \\x.x, t = \\x.c, "
              "G_m <= G_n iff m | n (m, n <= 12), so G_1 < G_2 < G_4 < ... ascends strictly",
              measured=True, ci_or_exact=True, own_paper=False, circular=False,
              holds=bool(chain.lemma_holds),
              result=f"bounded second-order matching, 144 pairs: "
              f"{'equals divisibility' if chain.lemma_holds else 'MISMATCH'}"),
        Claim("BKLV (JAR 2017, an earlier paper): the higher-order pattern lgg is unique and "
              "least general (golden cases from the spec + random typed pairs)",
              measured=True, ci_or_exact=True, own_paper=False, circular=False,
              holds=bool(golden_ok and props_ok),
              result=f"golden {sum(r['justified + matches spec'] == 'yes' for r in golden)}/"
              f"{len(golden)}; random properties "
              + ", ".join(f"{k} {props[k]:.3g}" for k in checks)),
        Claim("BKLV: the pattern lgg is computable in linear time (bucketed Mer: log-log slope "
              "<= 1.15; naive pairwise Mer superlinear)",
              measured=True, ci_or_exact=False, own_paper=False, circular=False,
              holds=bool(slope_ok and naive_ok),
              result=f"slope bucketed {bench['slope_bucket']:.2f}, naive "
              f"{bench['slope_naive']:.2f} ({bench['slope_naive_top_decade']:.2f} over its top "
              "decade); median of repeats, no CI"),
        Claim("our target: parse + AU of a 1e5-node-per-term pair in < 5 s CPU",
              measured=True, ci_or_exact=False, own_paper=False, circular=False,
              holds=bool(parse_ok),
              result=f"{bench['parse_au']['total_s']:.1f} s CPU "
              f"({bench['parse_au']['total_wall_s']:.1f} s wall, shared machine)"),
    ]
    measured = (
        f"BKLV pattern lgg: golden {'all pass' if golden_ok else 'FAIL'}, random properties "
        f"{'all 1.0' if props_ok else 'FAIL'}, bucketed-Mer slope {bench['slope_bucket']:.2f}; "
        f"nested chain G_m <= G_n iff m | n for m, n <= 12: "
        f"{'holds' if chain.lemma_holds else 'FAILS'}; none of the {len(nullc.checked)} "
        f"generalizations of size <= {null_k[0]} is maximal: "
        f"{'holds' if nullc.holds else 'FAILS'} (witnesses of size <= {null_k[1]})"
    )
    note = (
        "The BKLV results are an earlier paper's and do not stand in for the seed paper "
        "(Cerna & Buran); the chain is our construction. Times are process CPU time on a "
        "shared machine."
    )
    timing_rows = [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
        for r in bench["rows"]
    ]
    extra = "\n".join(
        [
            "**Random property checks** (typed pairs of <= 12 nodes): "
            + ", ".join(f"{k} {v:.3g}" for k, v in props.items()),
            "",
            "**Nullarity demonstrator** (our construction, consistent with the paper's "
            "theorem; not the paper's own witness): s = `\\x.x`, t = `\\x.c`.",
            "",
            markdown_table(R.chain_rows()),
            "G_m <= G_n found by bounded second-order matching (`#` = yes), m, n <= 12; "
            f"equals divisibility: **{not chain.mismatches}**; the pattern lgg is G_1: "
            f"**{chain.pattern_lgg_is_g1}**. So G_1 < G_2 < G_4 < ... is an infinite strictly "
            "ascending chain above the pattern lgg. Bounded nullarity check: "
            + nullc.statement() + ". Witnesses: "
            + "; ".join(f"`{show(g)}` < `{show(h)}`" for g, h in nullc.witness.items())
            + ". That no generalization of any size is maximal is the paper's theorem.",
            "",
            "```\n" + R.order_matrix_text(chain.order) + "\n```",
            "",
            "**Bounded enumeration, chain problem** (bodies of <= k symbols; gen. variables "
            "of arity <= 1, nested allowed):",
            "",
            markdown_table(enum_chain),
            "The last column stays > 0 at every other k (G_n becomes dominated by G_2n once "
            "it fits): no bound gives a stable set of maximal generalizations.",
            "",
            "**Bounded enumeration, golden row 1** (`\\x.f(x,x)` vs `\\x.f(a,x)`):",
            "",
            markdown_table(enum_g1),
            "",
            "**Timing** (nodes per input; untyped random pairs with many shared differences):",
            "",
            markdown_table(timing_rows),
            f"Parse + AU: {bench['parse_au']}",
            f"Total entry time {time.perf_counter() - t0:.0f} s.",
        ]
    )
    return Section(
        title=TITLE,
        claim=(
            "BKLV (JAR 2017): the higher-order pattern lgg is unique up to alpha and renaming "
            "and computable in linear time (Dec/Abs/Sol/Mer). Cerna & Buran (ACM TOCL 2024): with "
            "nested generalization variables AU is nullary (no minimal complete set), even with "
            "restricted arguments, for capture-avoiding substitutions."
        ),
        setup=(
            "Pure-Python jaxlm.symbolic: hash-consed de Bruijn terms, BKLV via the TMS engine "
            "with the pattern argument policy; Mer by canonical keys in a hash table (naive "
            "pairwise Mer for comparison). Golden rows from the spec; random typed pairs; chain "
            "G_n = \\x.X^n(x); sizes 1e2..1e5 nodes per input, median of repeats."
        ),
        table=golden,
        claims=claims,
        measured=measured,
        note=note,
        command="python -m experiments.reproduce --only=antiunify"
        + (" --quick" if ctx.quick else ""),
        plots=[plot],
        metrics={
            "golden_pass": golden_ok,
            "properties": props,
            "chain_lemma_holds": chain.lemma_holds,
            "nullarity_bounded": {"k": null_k[0], "k_witness": null_k[1],
                                  "checked": len(nullc.checked), "holds": nullc.holds},
            "slope_bucket": bench["slope_bucket"],
            "slope_bucket_ge_1e3": bench["slope_bucket_ge_1e3"],
            "slope_naive": bench["slope_naive"],
            "slope_naive_top_decade": bench["slope_naive_top_decade"],
            "parse_au_s": bench["parse_au"]["total_s"],
        },
        extra=extra,
    )
