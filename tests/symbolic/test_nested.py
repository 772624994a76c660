"""The nullarity demonstrator (our chain construction) and bounded enumeration."""

import pytest

from jaxlm.symbolic import matching as M
from jaxlm.symbolic import nested as N
from jaxlm.symbolic import terms as T
from jaxlm.symbolic.antiunify import pattern_lgg
from jaxlm.symbolic.syntax import parse, show


def test_divisibility_lemma_up_to_12():
    rep = N.chain_table(12)
    assert rep.mismatches == []
    assert rep.generalizations_ok and rep.pattern_lgg_is_g1 and rep.lemma_holds
    for m in range(1, 13):
        for n in range(1, 13):
            assert rep.order[m - 1][n - 1] == (n % m == 0)
    # the witness of G_2 <= G_6 is X := \z. X(X(X(z)))
    assert show(rep.witnesses[(2, 6)]["X"]) == r"\x. X(X(X(x)))"


def test_chain_is_strictly_ascending_and_generalizes():
    s, t = N.chain_problem()
    sig_s, sig_t = N.chain_substitutions()
    chain = [N.nested_chain(2**i) for i in range(4)]
    for lo, hi in zip(chain, chain[1:]):
        assert M.more_general(lo, hi) and not M.more_general(hi, lo)
    for g in chain:
        assert T.subst(g, sig_s) is s and T.subst(g, sig_t) is t
    assert M.equivalent(pattern_lgg(s, t).lgg, chain[0])
    with pytest.raises(ValueError):
        N.nested_chain(0)


def test_capture_avoidance_blocks_constant_images_with_bound_vars():
    s, _ = N.chain_problem()
    g = parse(r"\x. X(c)", {"X": "i->i", "c": "i"})
    assert M.match(g, s) is None  # X := \z. x would capture x


def test_enumeration_chain_problem_small_bounds():
    s, t = N.chain_problem()
    rows = N.enumeration_table(s, t, [2, 3, 4])
    by_k = {r["k"]: r for r in rows}
    assert by_k[2]["generalizations"] == 1 and by_k[2]["maximal_at_k"] == 1
    assert by_k[2]["not_maximal_at_k+1"] == 1  # G_1 < G_2 appears at k = 3
    assert by_k[4]["not_maximal_at_k+1"] >= 1  # G_2 < G_4 appears at k = 5
    res = N.enumerate_generalizations(s, t, 4)
    for g in res.generalizations:  # every enumerated term really generalizes both
        assert M.more_general(g, s) and M.more_general(g, t)


def test_enumeration_pattern_maximum_is_bklv_lgg():
    sig = {"f": "i->i->i", "a": "i"}
    s, t = parse(r"\x.f(x,x)", sig), parse(r"\x.f(a,x)", sig)
    res = N.enumerate_generalizations(s, t, 4, max_arity=1)
    pats = [i for i, g in enumerate(res.generalizations) if T.is_pattern(g)]
    lgg = pattern_lgg(s, t).lgg
    for i in pats:  # every pattern generalization is below the BKLV lgg
        assert M.more_general(res.generalizations[i], lgg)
    assert any(M.equivalent(res.generalizations[i], lgg) for i in pats)


def test_nullarity_check_chain_problem_within_bound():
    s, t = N.chain_problem()
    chk = N.nullarity_check(s, t, 3, 5)
    assert chk.holds and not chk.unwitnessed
    assert len(chk.checked) == 3  # G_1, G_2 and \x. X(Y(x))
    for g, h in chk.witness.items():  # each witness is a strictly less general generalization
        assert M.more_general(g, h) and not M.more_general(h, g)
        assert M.more_general(h, s) and M.more_general(h, t)
    g1 = N.nested_chain(1)
    assert any(M.equivalent(g, g1) for g in chk.checked)
    assert "<= 3 symbols" in chk.statement() and "<= 5 symbols" in chk.statement()


def test_nullarity_check_finds_the_maximal_generalization_of_a_unitary_problem():
    # control: \x.f(x,a) vs \x.f(x,b) has the lgg \x.f(x,G); the check must report it
    sig = {"f": "i->i->i", "a": "i", "b": "i"}
    chk = N.nullarity_check(parse(r"\x.f(x,a)", sig), parse(r"\x.f(x,b)", sig), 3, 5)
    assert not chk.holds
    assert [show(g) for g in chk.unwitnessed] == [r"\x. f(x, G0)"]


def test_nullarity_check_rejects_bad_bounds():
    s, t = N.chain_problem()
    with pytest.raises(ValueError, match="k_witness"):
        N.nullarity_check(s, t, 4, 3)
