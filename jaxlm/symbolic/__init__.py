"""Symbolic lambda terms and anti-unification (pure Python, no JAX).

Modules:
    terms: hash-consed de Bruijn terms, types, hereditary substitution, eta-long form.
    syntax: parser (``\\x y. f(X(x,y), c)``) and pretty-printer.
    antiunify: first-order lgg, the top-maximal-shallow engine, BKLV pattern lgg.
    matching: pattern matching, bounded second-order matching, the generality order.
    nested: bounded enumeration of nested generalizations and the nullarity chain.
"""

from jaxlm.symbolic.antiunify import (
    COMMON_SUBTERMS,
    PATTERN,
    POLICIES,
    ArgumentPolicy,
    AUResult,
    StoreEntry,
    fo_lgg,
    pattern_lgg,
    tms_lgg,
)
from jaxlm.symbolic.syntax import ParseError, TypeCheckError, parse, parse_type, show
from jaxlm.symbolic.terms import (
    NormalisationError,
    Term,
    Type,
    alpha_eq,
    arrow,
    base,
    eta_long,
    subst,
    type_of,
)

__all__ = [
    "COMMON_SUBTERMS", "PATTERN", "POLICIES", "ArgumentPolicy", "AUResult", "StoreEntry",
    "fo_lgg", "pattern_lgg", "tms_lgg", "ParseError", "TypeCheckError", "parse",
    "parse_type", "show", "NormalisationError", "Term", "Type", "alpha_eq", "arrow", "base",
    "eta_long", "subst", "type_of",
]
