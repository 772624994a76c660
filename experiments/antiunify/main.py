r"""Anti-unification of lambda terms from the command line.

    python -m experiments.antiunify --s='\x y. f(x, y)' --t='\x y. f(y, x)'
    python -m experiments.antiunify --s='\x. f(x)' --t='\x. f(a)' --sig='f:i->i,a:i'
    python -m experiments.antiunify --s='\x.x' --t='\x.c' --sig='c:i' --nested --bound=6
    python -m experiments.antiunify --demo=nullary
    python -m experiments.antiunify --bench [--config=quick]

Prints the pattern lgg (or the TMS lgg with --policy), the store and both
substitutions; --nested prints the bounded-enumeration table; --demo=nullary the
chain G_n = \x. X^n(x) (our construction) and the divisibility check; --bench runs
the linear-time benchmark (same library function as experiments/bench_antiunify.py).
"""

from __future__ import annotations

from absl import app, flags

from jaxlm.utils import cli

_S = flags.DEFINE_string("s", None, "First term, e.g. '\\x y. f(x, y)'.")
_T = flags.DEFINE_string("t", None, "Second term.")
_SIG = flags.DEFINE_string(
    "sig",
    None,
    "Typed mode: 'name:type,...' for every constant / free variable (e.g. 'f:i->i,a:i').",
)
_POLICY = flags.DEFINE_enum(
    "policy", "pattern", ["pattern", "common_subterms", "fo"], "Argument policy."
)
_MER = flags.DEFINE_enum("mer", "bucket", ["bucket", "naive"], "Mer implementation.")
_NESTED = flags.DEFINE_bool("nested", False, "Bounded enumeration of nested generalizations.")
_BOUND = flags.DEFINE_integer("bound", 5, "Size bound k for --nested (table for k = 2..bound).")
_FORCE = flags.DEFINE_bool("force", False, "--nested: allow --bound above MAX_NESTED_BOUND.")
_MAX_ARITY = flags.DEFINE_integer(
    "max_arity", 1, "Max arity of generalization variables (--nested)."
)
_DEMO = flags.DEFINE_enum("demo", None, ["nullary"], "Run a demonstrator.")
_NMAX = flags.DEFINE_integer("n_max", 12, "Divisibility check for m, n <= n_max (--demo=nullary).")
_BENCH = flags.DEFINE_bool("bench", False, "Run the linear-time benchmark.")
_CONFIG = flags.DEFINE_string("config", "quick", "Benchmark preset (full, quick, *_test).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Benchmark preset overrides field=value.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/antiunify", "Output folder (benchmark plot).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the benchmark pairs.")


# The table for bound B enumerates sizes up to B + 1; the count grows ~6-7x per size (for
# \x.x vs \x.c: size 6 ~1 s, size 7 ~6 s on one CPU core, so size 9 is minutes).
MAX_NESTED_BOUND = 7


def _check_bound(bound: int, force: bool) -> None:
    if bound < 2:
        raise cli.UserError(f"--bound={bound}: must be >= 2")
    if bound > MAX_NESTED_BOUND and not force:
        raise cli.UserError(
            f"--bound={bound} enumerates generalizations up to size {bound + 1}, which grows "
            f"~7x per size (minutes or more above {MAX_NESTED_BOUND}); use --bound<="
            f"{MAX_NESTED_BOUND}, or pass --force to run it anyway")


def _nested_table(N, s, t, bounds: list[int], max_arity: int) -> list[dict]:
    """``N.enumeration_table`` with a tqdm bar ticking once per enumerated size."""
    from tqdm.auto import tqdm

    orig = N.enumerate_generalizations
    sizes = len(set(bounds) | {max(bounds) + 1})
    with tqdm(total=sizes, desc="nested sizes", unit="size", dynamic_ncols=True) as bar:
        def counted(s_, t_, k, **kw):
            bar.set_postfix_str(f"size {k}")
            out = orig(s_, t_, k, **kw)
            bar.update(1)
            return out

        N.enumerate_generalizations = counted
        try:
            return N.enumeration_table(s, t, bounds, max_arity=max_arity)
        finally:
            N.enumerate_generalizations = orig


def _parse_sig(text: str | None):
    if text is None:
        return None
    sig = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        if ":" not in item:
            raise app.UsageError(f"--sig entry {item!r} must look like name:type (e.g. f:i->i)")
        name, ty = item.split(":", 1)
        sig[name.strip()] = ty.strip()
    return sig


def main(argv):
    del argv
    import pathlib

    if _NESTED.value:  # before parsing anything
        _check_bound(_BOUND.value, _FORCE.value)

    from jaxlm.symbolic import antiunify as A
    from jaxlm.symbolic import nested as N
    from experiments.antiunify import report as R
    from jaxlm.symbolic.syntax import ParseError, TypeCheckError, parse, show

    if _DEMO.value == "nullary":
        rep = N.chain_table(_NMAX.value)
        print("Chain G_n = \\x. X^n(x) for s = \\x.x, t = \\x.c "
              "(our construction, consistent with Cerna & Buran's nullarity theorem; "
              "not the paper's own witness)")
        for row in R.chain_rows():
            print(f"  n={row['n']}: {row['G_n']}  sigma_s {row['sigma_s']}  "
                  f"sigma_t {row['sigma_t']}")
        print(f"G_m <= G_n found by matching (# = yes), m, n <= {_NMAX.value}:")
        print(R.order_matrix_text(rep.order))
        print(f"order == divisibility: {not rep.mismatches}; every G_n generalizes s and t: "
              f"{rep.generalizations_ok}; pattern lgg ~ G_1: {rep.pattern_lgg_is_g1}")
        for (m, n), sig in rep.witnesses.items():
            print(f"  G_{m} <= G_{n} via X := {show(sig['X'])}")
        return 0
    if _BENCH.value:
        from experiments.antiunify.bench import (
            BENCH_PRESETS,
            bench_targets,
            geometric_sizes,
            run_benchmark,
            slope_plot,
        )
        from jaxlm.utils.config import ConfigError

        try:
            cfg = BENCH_PRESETS.get(_CONFIG.value, _OVERRIDE.value)
        except ConfigError as e:
            raise app.UsageError(str(e)) from None
        res = run_benchmark(geometric_sizes(cfg.lo, cfg.hi, cfg.per_decade), cfg.naive_max,
                            repeats=cfg.repeats, seed=_SEED.value,
                            parse_size=cfg.parse_size or None)
        out = pathlib.Path(_WORKDIR.value)
        out.mkdir(parents=True, exist_ok=True)
        for row in res["rows"]:
            print(row)
        for tg in bench_targets(res):
            met = "met" if tg.met else "NOT met"
            print(f"{tg.name}: {tg.measured:.3g} {tg.op} {tg.target} -> {met}")
        print("plot:", slope_plot(res, str(out / "antiunify_slope.png")))
        return 0
    if _S.value is None or _T.value is None:
        raise app.UsageError("give --s and --t (or --demo=nullary, or --bench)")
    try:
        sig = _parse_sig(_SIG.value)
        s, t = parse(_S.value, sig), parse(_T.value, sig)
    except (ParseError, TypeCheckError) as e:
        raise app.UsageError(str(e)) from None
    if _NESTED.value:
        bounds = list(range(2, _BOUND.value + 1))
        rows = _nested_table(N, s, t, bounds, _MAX_ARITY.value)
        keys = list(rows[0])
        print(" | ".join(keys))
        for r in rows:
            print(" | ".join(str(r[k]) for k in keys))
        return 0
    try:
        if _POLICY.value == "fo":
            res = A.fo_lgg(s, t)
        else:
            res = A.tms_lgg(s, t, _POLICY.value, mer=_MER.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print("lgg:    ", show(res.lgg))
    for e in res.store:
        print(f"  {e.var}{' : ' + str(e.ty) if e.ty else ''}   s-side {show(e.image_s)}   "
              f"t-side {show(e.image_t)}   ({e.occurrences} occurrence(s))")
    print("sigma_s:", {k: show(v) for k, v in res.sigma_s.items()})
    print("sigma_t:", {k: show(v) for k, v in res.sigma_t.items()})
    print("justified (g sigma_s = s, g sigma_t = t):", res.justify(s, t))
    return 0


if __name__ == "__main__":
    cli.run(main)
