"""Golden cases (spec section 1(c)), first-order lgg, policies, input validation."""

import pytest

from jaxlm.symbolic import antiunify as A
from jaxlm.symbolic import matching as M
from jaxlm.symbolic import terms as T
from jaxlm.symbolic.syntax import parse, show

# (s, t, expected pattern lgg up to alpha and renaming, expected number of Mer steps)
GOLDEN = [
    (r"\x.f(x,x)", r"\x.f(a,x)", r"\x.f(X(x), x)", 0),
    (r"\x.f(b,x)", r"\x.f(a,x)", r"\x.f(X, x)", 0),
    (
        r"\x,y.f(f(g(x),y),f(g(y),x))",
        r"\x,y.f(h(y,g(x)),h(x,g(y)))",
        r"\x,y.f(X(x,y), X(y,x))",
        1,
    ),
    (r"\x,y.f(x,y)", r"\x,y.f(y,x)", r"\x,y.f(X(x,y), X(y,x))", 1),
    (
        r"\x,y,z.g(f(x,z),f(y,z),f(y,x))",
        r"\x,y,z.g(h(y,x),h(x,y),h(z,y))",
        r"\x,y,z.g(X(x,y,z), X(y,x,z), X(y,z,x))",
        2,
    ),
    (r"\x,y.f(\z.g(z,y),g(x,y))", r"\x,y.f(\z.h(y,z),h(y,x))", r"\x,y.f(\z.X(y,z), X(y,x))", 1),
    (
        r"\x.f(\y.g(x,y),\y.g(y,x))",
        r"\x.f(\y.h(x,y,x),\y.h(y,x,y))",
        r"\x.f(\y.X(x,y), \y.X(y,x))",
        1,
    ),
    (r"\x.x", r"\x.c", r"\x.X(x)", 0),
    ("f(a,g(a))", "f(b,g(b))", "f(X, g(X))", 1),
]


@pytest.mark.parametrize("mer", ["bucket", "naive"])
@pytest.mark.parametrize("case", range(len(GOLDEN)), ids=lambda i: f"golden{i + 1}")
def test_golden_pattern_lgg(case, mer):
    s_txt, t_txt, want_txt, n_mer = GOLDEN[case]
    s, t, want = parse(s_txt), parse(t_txt), parse(want_txt)
    res = A.pattern_lgg(s, t, mer=mer)
    # justification: g sigma_s = s and g sigma_t = t
    assert T.subst(res.lgg, res.sigma_s) is s
    assert T.subst(res.lgg, res.sigma_t) is t
    assert res.justify(s, t)
    # lgg up to alpha-equivalence and renaming (mutual pattern instances)
    assert M.equivalent(res.lgg, want), show(res.lgg)
    assert T.is_pattern(res.lgg)
    assert res.stats["mer"] == n_mer
    assert len(res.store) == res.stats["sol"] - n_mer


def test_golden_exact_output_strings():
    # our variable naming and parameter order reproduce the spec's rows literally
    for s_txt, t_txt, want_txt, _ in GOLDEN:
        assert A.pattern_lgg(parse(s_txt), parse(t_txt)).lgg is parse(want_txt)


def test_golden_typed_versions_agree():
    sig = {"f": "i->i->i", "g": "i->i->i", "h": "i->i->i", "a": "i", "b": "i", "c": "i"}
    for s_txt, t_txt, want_txt in [(r"\x.f(x,x)", r"\x.f(a,x)", r"\x.f(X(x), x)"),
                                  (r"\x,y.f(x,y)", r"\x,y.f(y,x)", r"\x,y.f(X(x,y), X(y,x))")]:
        s, t = parse(s_txt, sig), parse(t_txt, sig)
        res = A.pattern_lgg(s, t)
        assert res.justify(s, t)
        want = parse(want_txt, sig | {"X": "i->i" if "X(x)" in want_txt else "i->i->i"})
        assert res.lgg is want


def test_higher_order_bound_variable_argument_is_eta_expanded():
    sig = {"h": "(i->i)->i", "k": "(i->i)->i->i", "a": "i"}
    s = parse(r"\F:i->i. k(F, a)", sig)
    t = parse(r"\F:i->i. k(\z. a, F(a))", sig)
    res = A.pattern_lgg(s, t)
    assert res.justify(s, t)
    assert T.is_pattern(res.lgg)
    # the bound variable x : i->i appears eta-expanded as an argument of X and Y
    assert show(res.lgg) == r"\x. k(\y. X(\z. x(z), y), Y(\y. x(y)))"


def test_fo_lgg_pair_memo():
    s, t = parse("f(a, g(a), h(a, b))"), parse("f(b, g(b), h(b, b))")
    res = A.fo_lgg(s, t)
    assert res.lgg is parse("f(X, g(X), h(X, b))")
    assert res.justify(s, t)
    assert len(res.store) == 1 and res.store[0].occurrences == 3
    with pytest.raises(ValueError, match="first-order"):
        A.fo_lgg(parse(r"\x. x"), parse(r"\x. c"))


def test_common_subterms_policy_is_sound_and_shallow():
    s, t = parse(r"\x. f(g(x), a)"), parse(r"\x. k(g(x), b)")
    res = A.tms_lgg(s, t, "common_subterms")
    assert res.justify(s, t)
    assert show(res.lgg) == r"\x. X(g(x), x)"
    # no generalization variable nested in another's arguments
    for node, _ in T.iter_subterms(res.lgg):
        if node.kind == T.APP and node.hkind == T.FVAR:
            assert not any(a.has_fv for a in node.args)
    pat = A.pattern_lgg(s, t).lgg
    assert M.more_general(pat, res.lgg) or M.more_general(res.lgg, pat) is False


def test_input_validation():
    with pytest.raises(ValueError, match="different types"):
        A.pattern_lgg(parse(r"\x. x", {}), parse("c", {"c": "i"}))
    with pytest.raises(ValueError, match="unknown policy"):
        A.tms_lgg(parse("a"), parse("b"), "nope")
    with pytest.raises(ValueError, match="mer must be"):
        A.tms_lgg(parse("a"), parse("b"), mer="trie")
    with pytest.raises(TypeError):
        A.pattern_lgg("a", "b")


def test_large_terms_are_linear_and_iterative():
    from experiments.antiunify.bench import random_pair

    s, t = random_pair(20_000, seed=3)
    res = A.pattern_lgg(s, t)
    assert res.justify(s, t)
    assert res.stats["mer"] > 0
