"""Property tests on random typed terms (hypothesis): soundness, least generality
among pattern generalizations (brute force up to a size bound), idempotence, symmetry."""

from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlm.symbolic import matching as M
from jaxlm.symbolic import nested as N
from jaxlm.symbolic import terms as T
from jaxlm.symbolic.antiunify import pattern_lgg

I = T.base("i")
II = T.arrow(I, I)
F2 = T.arrow(I, I, I)
H = T.arrow(II, I)  # takes a function: produces inner lambdas
PREFIX = 2  # every random term is \x y:i. body


def _build(tree, depth: int) -> T.Term:
    kind = tree[0]
    if kind == "leaf":
        v = tree[1]
        if v < PREFIX:  # prefix-bound variable (level v)
            return T.bvar(depth - 1 - v)
        return T.const("ab"[v - PREFIX], I)
    if kind == "inner":  # the innermost local binder
        return T.bvar(0) if depth > PREFIX else T.const("a", I)
    if kind == "f":
        return T.const("f", F2, _build(tree[1], depth), _build(tree[2], depth))
    if kind == "g":
        return T.const(tree[1], II, _build(tree[2], depth))
    if kind == "h":
        return T.const("h", H, T.mk_abs(I, _build(tree[1], depth + 1)))
    raise AssertionError(kind)


def _trees(allow_lambda: bool):
    leaves = st.one_of(
        st.tuples(st.just("leaf"), st.integers(0, PREFIX + 1)),
        st.just(("inner",)),
    )

    def extend(children):
        opts = [
            st.tuples(st.just("f"), children, children),
            st.tuples(st.just("g"), st.sampled_from(["g", "k"]), children),
        ]
        if allow_lambda:
            opts.append(st.tuples(st.just("h"), children))
        return st.one_of(*opts)

    return st.recursive(leaves, extend, max_leaves=6)


def _term(tree) -> T.Term:
    return T.lams([I] * PREFIX, _build(tree, PREFIX))


terms_ho = _trees(True).map(_term)
terms_fo_body = _trees(False).map(_term)
SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(terms_ho, terms_ho)
def test_soundness_justification(s, t):
    for mer in ("bucket", "naive"):
        res = pattern_lgg(s, t, mer=mer)
        assert T.subst(res.lgg, res.sigma_s) is s
        assert T.subst(res.lgg, res.sigma_t) is t
        assert T.is_pattern(res.lgg)
        assert T.type_of(res.lgg) == T.type_of(s)
    assert pattern_lgg(s, t, mer="naive").lgg is pattern_lgg(s, t).lgg


@SETTINGS
@given(terms_ho, terms_ho)
def test_symmetry(s, t):
    assert M.equivalent(pattern_lgg(s, t).lgg, pattern_lgg(t, s).lgg)


@SETTINGS
@given(terms_ho, terms_ho)
def test_idempotence(s, t):
    assert pattern_lgg(s, s).lgg is s
    g = pattern_lgg(s, t).lgg
    # anti-unifying the lgg with an instance returns the lgg again (up to renaming)
    assert M.equivalent(pattern_lgg(g, s).lgg, g)


@settings(max_examples=25, deadline=None)
@given(terms_fo_body, terms_fo_body)
def test_least_general_among_pattern_generalizations(s, t):
    """Every pattern generalization with a body of <= 4 symbols is below the BKLV lgg."""
    lgg = pattern_lgg(s, t).lgg
    res = N.enumerate_generalizations(
        s, t, 4, max_vars=2, max_arity=2, patterns_only=True, compute_order=False
    )
    assert res.generalizations, "the trivial generalization \\x y. X(x, y) is always found"
    for g in res.generalizations:
        assert T.is_pattern(g)
        assert M.match_pattern(g, lgg) is not None
