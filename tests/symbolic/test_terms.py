"""Terms, parser/printer, alpha-equivalence, substitution, normalisation."""

import re

import pytest

from jaxlm.symbolic import terms as T
from jaxlm.symbolic.syntax import ParseError, TypeCheckError, parse, parse_type, show

SIG = {"f": "i->i->i", "g": "i->i", "h": "(i->i)->i", "a": "i", "b": "i", "c": "i"}


@pytest.mark.parametrize(
    "text",
    [r"\x y. f(X(x, y), c)", r"\x. f(\y. g(x, y), \y. g(y, x))", "f(a, g(a))", r"\x. x(a)"],
)
def test_print_parse_roundtrip(text):
    t = parse(text)
    assert show(t) == text
    assert parse(show(t)) is t


def test_alpha_equivalence_is_identity():
    assert parse(r"\x. \y. f(x, y)") is parse(r"\u v. f(u, v)")
    assert parse(r"\x y. f(x, y)") is not parse(r"\x y. f(y, x)")
    assert T.alpha_eq(parse(r"\z. g(z)"), parse(r"\w. g(w)"))


def test_printer_avoids_symbol_names():
    t = parse(r"\q. f(q, x)")  # x is a constant here
    assert show(t) == r"\x1. f(x1, x)"
    assert parse(show(t)) is t


def test_beta_reduction_in_parser():
    assert parse(r"(\x. f(x, x))(a)") is parse("f(a, a)")
    assert parse(r"(\x y. f(y, x))(a)(b)") is parse("f(b, a)")
    assert parse(r"(\k. k(a))(\z. g(z))") is parse("g(a)")


def test_capture_avoiding_substitution():
    # X := \z. \y. f(z, y) applied under a binder named y must not capture.
    t = parse(r"\y. X(y)")
    img = parse(r"\z. h(\y. f(z, y))")
    out = T.subst(t, {"X": img})
    assert out is parse(r"\y. h(\w. f(y, w))")
    # image with a loose bound variable is rejected
    with pytest.raises(ValueError, match="loose"):
        T.subst(t, {"X": T.bvar(0)})


def test_hereditary_substitution_reduces_created_redexes():
    sig = {"F": "(i->i)->i", "g": "i->i", "a": "i"}
    t = parse(r"F(\z. g(z))", sig)
    img = parse(r"\k. k(k(a))", {"a": "i"} | {"k": "i->i"})
    out = T.subst(t, {"F": T.lams([parse_type("i->i")], T.strip_lams(img)[1])})
    assert out is parse("g(g(a))", sig)


def test_eta_long_typed_parse():
    t = parse(r"\x. h(g)", SIG)  # g : i->i used as an argument: eta-expanded
    assert t is parse(r"\x. h(\z. g(z))", SIG)
    assert show(t, types=True) == r"\x:i. h(\y:i. g(y))"
    assert T.type_of(parse(r"\x y. f(x, y)", SIG)) == parse_type("i->i->i")
    # partial application gets eta-expanded too
    assert parse("f(a)", SIG) is parse(r"\z. f(a, z)", SIG)


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\x. f(x,", "expected a term"),
        (r"\. x", "expected a binder name"),
        ("f(a b)", "expected ',' or ')'"),
        ("f(a))", "expected end of input"),
        ("f # a", "expected an identifier"),
        ("", "expected a term"),
    ],
)
def test_parse_errors_name_position_and_token(text, expected):
    with pytest.raises(ParseError, match=re.escape(expected)) as e:
        parse(text)
    assert "column" in str(e.value)


@pytest.mark.parametrize(
    "text, sig, expected",
    [
        (r"\x. f(x, x, x)", SIG, "cannot match"),
        (r"\x. x(x)", {}, "infinite type"),
        ("k(a)", SIG, "unknown symbol 'k'"),
        ("g(f)", SIG, "cannot match"),
    ],
)
def test_ill_typed_input_gives_clear_error(text, sig, expected):
    with pytest.raises(TypeCheckError, match=expected):
        parse(text, sig)


def test_untyped_non_normalising_term_raises():
    with pytest.raises(T.NormalisationError):
        parse(r"(\x. x(x))(\x. x(x))")


def test_deep_terms_have_no_recursion_limit():
    n = 30_000
    text = "f(" * n + "a" + ")" * n
    t = parse(text)
    assert t.size == n + 1
    assert show(t) == text
    lam = parse("\\x. " + "g(" * n + "x" + ")" * n)
    out = T.subst(T.fvar("X", None, T.bvar(0)), {"X": lam})  # untyped, top-level bvar lost
    assert out.size == n + 1
    assert T.shift(T.strip_lams(lam)[1], 5).size == n + 1

