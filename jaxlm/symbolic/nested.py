r"""Nested generalization variables: bounded enumeration and the nullarity chain.

Cerna & Buran (ACM TOCL 2024) prove that anti-unification with nested
generalization variables is *nullary* under capture-avoiding substitutions: no
minimal complete set of generalizations exists. We do not re-prove that. This
module gives two executable pictures:

* :func:`nested_chain` / :func:`chain_table`: **our construction, consistent with the
  paper's theorem (not the paper's own witness)**. For ``s = \x.x`` and ``t = \x.c``,
  ``G_n = \x. X^n(x)`` is a generalization for every n >= 1 (``X := \z.z`` resp.
  ``X := \z.c``), and ``G_m <= G_n`` iff ``m | n``, so ``G_1 < G_2 < G_4 < ...`` is an
  infinite strictly ascending chain. The pattern lgg ``\x.X(x)`` is ``G_1``. This shows
  "no lgg within the family" and "ascending chains of unbounded length"; that no
  maximal generalization exists above the chain is the paper's theorem.
* :func:`enumerate_generalizations`: every generalization of (s, t) with at most k
  symbols in its body (first-order-shaped bodies under the common lambda prefix,
  generalization variables of small arity over base types, possibly nested), kept
  iff bounded second-order matching instantiates it to both inputs; the generality
  order among them, the maximal classes at bound k, and those that stop being
  maximal at k+1.
* :func:`nullarity_check`: the bounded part of the theorem's premise: every
  generalization with a body of <= k symbols has a strictly less general one of
  <= k' symbols, so none of them can be in a minimal complete set.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from jaxlm.symbolic import matching as M
from jaxlm.symbolic import terms as T
from jaxlm.symbolic.antiunify import pattern_lgg
from jaxlm.symbolic.terms import ABS, BVAR, CONST, FVAR, Term

IOTA = T.base("i")


# ------------------------------------------------------------------ the chain
def chain_problem() -> tuple[Term, Term]:
    r"""``(\x:i. x, \x:i. c)`` with ``c : i``."""
    c = T.const("c", IOTA)
    return T.mk_abs(IOTA, T.bvar(0)), T.mk_abs(IOTA, c)


def nested_chain(n: int, var: str = "X") -> Term:
    r"""``G_n = \x:i. X^n(x)`` with ``X : i -> i`` (n >= 1)."""
    if n < 1:
        raise ValueError(f"nested_chain needs n >= 1, got {n}")
    xty = T.arrow(IOTA, IOTA)
    body = T.bvar(0)
    for _ in range(n):
        body = T.fvar(var, xty, body)
    return T.mk_abs(IOTA, body)


def chain_substitutions(var: str = "X") -> tuple[dict[str, Term], dict[str, Term]]:
    r"""``sigma_s = {X := \z.z}``, ``sigma_t = {X := \z.c}`` (capture-free: c is closed)."""
    return (
        {var: T.mk_abs(IOTA, T.bvar(0))},
        {var: T.mk_abs(IOTA, T.const("c", IOTA))},
    )


@dataclasses.dataclass
class ChainReport:
    """Machine check of the chain lemma.

    Attributes:
        n_max: the lemma is checked for all ``1 <= m, n <= n_max``.
        order: ``order[m-1][n-1]`` is True iff ``G_m <= G_n`` was found by matching.
        mismatches: ``(m, n)`` pairs where the order differs from ``m | n``.
        witnesses: ``(m, n) -> sigma`` for a few divisor pairs.
        generalizations_ok: every ``G_n`` instantiates to s and t with the chain substitutions.
        pattern_lgg_is_g1: the BKLV lgg of the chain problem is equivalent to ``G_1``.
    """

    n_max: int
    order: list[list[bool]]
    mismatches: list[tuple[int, int]]
    witnesses: dict[tuple[int, int], dict[str, Term]]
    generalizations_ok: bool
    pattern_lgg_is_g1: bool

    @property
    def lemma_holds(self) -> bool:
        return not self.mismatches and self.generalizations_ok and self.pattern_lgg_is_g1


def chain_table(n_max: int = 12) -> ChainReport:
    """Checks ``G_m <= G_n  <=>  m | n`` for ``m, n <= n_max`` with the bounded matcher."""
    s, t = chain_problem()
    sig_s, sig_t = chain_substitutions()
    gs = [nested_chain(n) for n in range(1, n_max + 1)]
    gen_ok = all(T.subst(g, sig_s) is s and T.subst(g, sig_t) is t for g in gs)
    order, mismatches, witnesses = [], [], {}
    for m in range(1, n_max + 1):
        row = []
        for n in range(1, n_max + 1):
            sigma = M.match(gs[m - 1], gs[n - 1])
            row.append(sigma is not None)
            if (sigma is not None) != (n % m == 0):
                mismatches.append((m, n))
            if sigma is not None and m > 1 and n > m and len(witnesses) < 6:
                witnesses[(m, n)] = sigma
        order.append(row)
    lgg = pattern_lgg(s, t).lgg
    return ChainReport(n_max, order, mismatches, witnesses, gen_ok, M.equivalent(lgg, gs[0]))


# ------------------------------------------------------- bounded enumeration
@dataclasses.dataclass(frozen=True)
class _Sym:
    kind: str  # "c" | "v" (generalization variable) | "b" (bound, level)
    name: object
    arg_tys: tuple
    res_ty: object
    ty: object  # full type for c / v (None untyped)


def _signature(s: Term, t: Term) -> tuple[list, list[_Sym]]:
    """Common lambda prefix types and the rigid symbols (constants / input free
    variables / prefix-bound variables) whose arguments are all of base type."""
    tys_s, bs = T.strip_lams(s)
    tys_t, bt = T.strip_lams(t)
    if tys_s != tys_t:
        raise ValueError("enumeration needs inputs with the same lambda prefix")
    syms: dict[tuple, _Sym] = {}
    for body in (bs, bt):
        for node, m in T.iter_subterms(body):
            if node.kind == ABS:
                raise ValueError(
                    "bounded enumeration supports bodies without inner lambdas "
                    "(first-order shaped bodies under the common prefix)"
                )
            if node.hkind == BVAR:
                continue
            if node.ty is not None:
                a, r = T.split_type(node.ty)
                if any(not x.is_base for x in a):
                    raise ValueError(f"symbol {node.head} has a higher-order argument")
                syms[(node.hkind, node.head)] = _Sym(node.hkind, node.head, tuple(a), r, node.ty)
            else:
                syms[(node.hkind, node.head)] = _Sym(
                    node.hkind, node.head, (None,) * len(node.args), None, None
                )
    d = len(tys_s)
    for lvl, ty in enumerate(tys_s):
        if ty is None or ty.is_base:
            syms[("b", lvl)] = _Sym("b", lvl, (), ty, None)
    return tys_s, [syms[k] for k in sorted(syms, key=str)] if d >= 0 else []


def _enumerate_bodies(
    syms: Sequence[_Sym],
    gv_types: Sequence[tuple],
    res_ty,
    max_size: int,
    depth: int,
) -> list[list[Term]]:
    """``by_size[k]``: all bodies of exactly k symbols (gen vars from a pool)."""
    # table[(ty, size)] -> list of terms
    heads = list(syms) + list(gv_types)
    tys = {res_ty} | {a for h in heads for a in h.arg_tys} | {h.res_ty for h in heads}
    table: dict[tuple, list[Term]] = {}
    for size in range(1, max_size + 1):
        for ty in tys:
            out = []
            for h in heads:
                if h.res_ty != ty:
                    continue
                n = len(h.arg_tys)
                if n == 0:
                    if size == 1:
                        out.append(_mk_head(h, (), depth))
                    continue
                for split in _compositions(size - 1, n):
                    lists = [table.get((h.arg_tys[i], split[i]), []) for i in range(n)]
                    for args in itertools.product(*lists):
                        out.append(_mk_head(h, args, depth))
            table[(ty, size)] = out
    return [table.get((res_ty, k), []) for k in range(max_size + 1)]


def _mk_head(h: _Sym, args, depth: int) -> Term:
    if h.kind == "b":
        return T.mk_app(BVAR, depth - 1 - h.name, None, args)
    return T.mk_app(CONST if h.kind == "c" else FVAR, h.name, h.ty, args)


def _compositions(total: int, parts: int):
    if parts == 1:
        if total >= 1:
            yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in _compositions(total - first, parts - 1):
            yield (first,) + rest


def _canonical_vars(t: Term, prefix: str = "G") -> Term:
    """Renames generalization variables G* to G0, G1, ... in first-occurrence order."""
    order: list[str] = []
    for node, _ in T.iter_subterms(t):
        if node.kind == ABS or node.hkind != FVAR:
            continue
        if node.head.startswith(prefix) and node.head not in order:
            order.append(node.head)
    mapping = {v: f"__{i}" for i, v in enumerate(order)}
    t = T.rename_fvars(t, mapping)
    return T.rename_fvars(t, {f"__{i}": f"{prefix}{i}" for i in range(len(order))})


@dataclasses.dataclass
class EnumerationResult:
    """Generalizations of (s, t) with bodies of at most ``bound`` symbols.

    Attributes:
        bound: the size bound k.
        generalizations: distinct (up to variable renaming) generalizations, by size.
        classes: equivalence classes (lists of indices into ``generalizations``).
        above: ``above[i]``: indices j with ``generalizations[i] < generalizations[j]``
            strictly (j is strictly less general).
        maximal: indices of classes (into ``classes``) with nothing strictly above.
    """

    bound: int
    generalizations: list[Term]
    sizes: list[int]
    classes: list[list[int]]
    above: list[set[int]]
    maximal: list[int]


def enumerate_generalizations(
    s: Term,
    t: Term,
    size_bound: int,
    *,
    max_vars: int = 2,
    max_arity: int = 1,
    max_candidates: int = 20_000,
    patterns_only: bool = False,
    compute_order: bool = True,
    progress=None,
) -> EnumerationResult:
    """All generalizations of ``s`` and ``t`` whose body has at most ``size_bound`` symbols.

    Bodies are built under the common lambda prefix from the prefix-bound variables,
    the constants of s and t, and up to ``max_vars`` generalization variables of arity
    ``<= max_arity`` over the base type of the bodies (nesting allowed). A candidate is
    kept iff bounded second-order matching instantiates it to s and to t.

    Args:
        s, t: closed terms with the same lambda prefix, first-order shaped bodies.
        size_bound: k, the maximum number of symbols in a body.
        max_vars: generalization variables per arity.
        max_arity: maximum arity of a generalization variable.
        max_candidates: cap for the bounded matcher.
        patterns_only: keep only higher-order patterns (linear matching; for checking
            least generality of the pattern lgg).
        compute_order: compute the generality order, classes and maximal elements
            (quadratic in the number of generalizations); otherwise those are empty.
        progress: optional tqdm-like bar factory ``progress(total, desc)``.

    Returns:
        :class:`EnumerationResult`.
    """
    if size_bound < 1:
        raise ValueError(f"size_bound must be >= 1, got {size_bound}")
    prefix, syms = _signature(s, t)
    _, bs = T.strip_lams(s)
    typed = T.type_of(s) is not None
    res_ty = T.type_of(bs, prefix) if typed else None
    if typed and not res_ty.is_base:
        raise ValueError("bodies must have base type")
    gv = []
    for arity in range(max_arity + 1):
        for i in range(max_vars):
            arg_tys = (res_ty,) * arity
            ty = T.arrow(*arg_tys, res_ty) if typed else None
            gv.append(_Sym("v", f"G{arity}_{i}", arg_tys, res_ty, ty))
    by_size = _enumerate_bodies(syms, gv, res_ty, size_bound, len(prefix))
    seen: dict[Term, int] = {}
    gens: list[Term] = []
    sizes: list[int] = []
    total = sum(len(x) for x in by_size)
    bar = progress(total, f"enumerate k<={size_bound}") if progress else None
    for k, bodies in enumerate(by_size):
        for body in bodies:
            if bar is not None:
                bar.update(1)
            g = _canonical_vars(T.lams(prefix, body))
            if g in seen:
                continue
            if patterns_only and not T.is_pattern(g):
                seen[g] = -1
                continue
            seen[g] = -1
            try:
                ok = M.more_general(g, s, max_candidates=max_candidates) and M.more_general(
                    g, t, max_candidates=max_candidates
                )
            except M.SearchLimit:
                ok = False
            if ok:
                seen[g] = len(gens)
                gens.append(g)
                sizes.append(k)
    if bar is not None:
        bar.close()
    n = len(gens)
    if not compute_order:
        return EnumerationResult(size_bound, gens, sizes, [], [], [])
    leq = [
        [
            i == j or M.more_general(gens[i], gens[j], max_candidates=max_candidates)
            for j in range(n)
        ]
        for i in range(n)
    ]
    classes: list[list[int]] = []
    cls_of = [-1] * n
    for i in range(n):
        if cls_of[i] >= 0:
            continue
        members = [j for j in range(n) if leq[i][j] and leq[j][i]]
        for j in members:
            cls_of[j] = len(classes)
        classes.append(members)
    above = [{j for j in range(n) if leq[i][j] and not leq[j][i]} for i in range(n)]
    maximal = [c for c, members in enumerate(classes) if not above[members[0]]]
    return EnumerationResult(size_bound, gens, sizes, classes, above, maximal)


@dataclasses.dataclass
class NullarityCheck:
    """The bounded nullarity check of :func:`nullarity_check`.

    Attributes:
        k: every generalization with a body of at most ``k`` symbols was checked.
        k_witness: witnesses were searched among bodies of at most ``k_witness`` symbols.
        checked: the generalizations of size <= k (canonical variable names).
        witness: ``witness[g]``: a generalization of size <= k_witness strictly less
            general than ``g`` (absent when none was found within the bound).
        unwitnessed: the checked generalizations without a witness.
        holds: every checked generalization has a witness (none of them is maximal).
    """

    k: int
    k_witness: int
    checked: list[Term]
    witness: dict[Term, Term]
    unwitnessed: list[Term]
    holds: bool

    def statement(self) -> str:
        """What was checked, in one sentence (the bound and the term language)."""
        return (f"each of the {len(self.checked)} generalizations with a body of <= {self.k} "
                f"symbols has a strictly less general generalization with a body of <= "
                f"{self.k_witness} symbols ({len(self.unwitnessed)} without one)")


def nullarity_check(s: Term, t: Term, k: int, k_witness: int, **kw) -> NullarityCheck:
    """Checks, within a bound, that no generalization of (s, t) is maximal.

    Every element of a minimal complete set of generalizations is maximal (were ``c``
    not maximal, some ``h > c`` would be covered by another member ``c' >= h > c``,
    against minimality). So if no generalization is maximal, no minimal complete set
    exists and the problem is nullary (Cerna & Buran's theorem, for their witness
    problems). This function checks the finite part of that premise it can: for every
    generalization ``g`` with a body of at most ``k`` symbols (in the term language of
    :func:`enumerate_generalizations` with ``kw``: generalization variables of arity
    ``<= max_arity``, at most ``max_vars`` per arity, nesting allowed) it looks for a
    generalization ``h`` with a body of at most ``k_witness`` symbols with ``g < h``
    strictly (``g <= h`` by a matching substitution, and no substitution for ``h <= g``
    by exhaustive bounded matching). A witness proves ``g`` is not maximal among *all*
    generalizations; it does not cover generalizations larger than ``k`` or outside the
    term language, which is what the theorem adds.

    Args:
        s, t: as for :func:`enumerate_generalizations`.
        k: size bound of the generalizations checked.
        k_witness: size bound of the witnesses searched (>= k).
        **kw: passed to :func:`enumerate_generalizations` (``max_vars``, ``max_arity``,
            ``max_candidates``).

    Returns:
        :class:`NullarityCheck`.

    Raises:
        ValueError: ``k < 1`` or ``k_witness < k``.
    """
    if k < 1 or k_witness < k:
        raise ValueError(f"need 1 <= k <= k_witness, got k={k}, k_witness={k_witness}; "
                         "pass a witness bound at least the checked bound (e.g. 2k - 1)")
    res = enumerate_generalizations(s, t, k_witness, **kw)
    checked, witness, missing = [], {}, []
    for i, g in enumerate(res.generalizations):
        if res.sizes[i] > k:
            continue
        checked.append(g)
        if res.above[i]:
            j = min(res.above[i], key=lambda j: (res.sizes[j], j))
            witness[g] = res.generalizations[j]
        else:
            missing.append(g)
    return NullarityCheck(k, k_witness, checked, witness, missing,
                          holds=bool(checked) and not missing)


def enumeration_table(
    s: Term,
    t: Term,
    bounds: Sequence[int],
    **kw,
) -> list[dict]:
    """Rows per bound k: #generalizations, #classes, #maximal classes at k, and how many
    of those stop being maximal at k+1 (a generalization of size k+1 lies strictly above)."""
    import time

    rows = []
    results = {}
    for k in sorted(set(bounds) | {max(bounds) + 1}):
        t0 = time.perf_counter()
        results[k] = (enumerate_generalizations(s, t, k, **kw), time.perf_counter() - t0)
    for k in sorted(bounds):
        res, secs = results[k]
        nxt, _ = results[k + 1]
        idx = {g: i for i, g in enumerate(nxt.generalizations)}
        stop = 0
        for c in res.maximal:
            g = res.generalizations[res.classes[c][0]]
            if nxt.above[idx[g]]:
                stop += 1
        max_repr = [
            _show(res.generalizations[res.classes[c][0]]) for c in res.maximal[:4]
        ]
        rows.append(
            {
                "k": k,
                "generalizations": len(res.generalizations),
                "classes": len(res.classes),
                "maximal_at_k": len(res.maximal),
                "not_maximal_at_k+1": stop,
                "seconds": round(secs, 3),
                "maximal_examples": "; ".join(max_repr),
            }
        )
    return rows


def _show(t: Term) -> str:
    from jaxlm.symbolic.syntax import show

    return show(t)
