r"""Matching and the generality preorder ``g <= s`` ("g is more general than s").

* :func:`match_pattern`: higher-order pattern matching, linear and deterministic:
  an occurrence ``X(x1..xn)`` (distinct bound variables) against ``u`` forces
  ``X := \x1..xn. u`` (capture-avoiding: fails if ``u`` mentions another bound variable).
* :func:`match`: bounded second-order matching for non-pattern (e.g. nested)
  generalizations of small size: goal-directed backtracking. At ``X(a1..an) =^= u``
  with X unassigned, each candidate image is ``u`` with chosen occurrences of chosen
  subterms ``v_i`` replaced by ``z_i`` (all subsets; capture-avoiding), and the new
  goals are ``a_i =^= v_i`` (an unused ``z_i`` leaves ``a_i`` unconstrained). With X
  assigned, its image body is matched against ``u`` to read the ``v_i``. Every
  second-order solution has this shape, so for second-order variables over base
  types the search is complete; it is capped by ``max_candidates`` and a returned
  substitution is re-checked (``g sigma == s``), so it is always a witness.
* :func:`more_general`, :func:`equivalent`: the preorder and its equivalence.

Variables of the *generalization* are flexible; free variables of the target are
rigid constants (so ``X`` may occur on both sides with different roles).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from jaxlm.symbolic import terms as T
from jaxlm.symbolic.terms import ABS, APP, BVAR, FVAR, Term


class NotPattern(ValueError):
    """The generalization has a non-pattern occurrence (pattern matching does not apply)."""


class SearchLimit(RuntimeError):
    """Bounded second-order matching hit its candidate cap."""


def _abstract_levels(u: Term, index_map: dict[int, int], n: int, tys) -> Term | None:
    r"""``\z1..zn. u`` where loose index ``i`` of ``u`` becomes ``z_{index_map[i]}``;
    ``None`` if ``u`` has a loose index outside ``index_map`` (capture)."""
    ok = [True]

    def app_fn(node: Term, m: int, args):
        if node.hkind == BVAR and node.head >= m:
            j = index_map.get(node.head - m)
            if j is None:
                ok[0] = False
                return T.mk_app(BVAR, 0, None, args)
            return T.mk_app(BVAR, m + n - 1 - j, None, args)
        return T.mk_app(node.hkind, node.head, node.ty, args)

    body = T._rebuild(u, app_fn, lambda node, m: node.lb <= m)
    return T.lams(tys, body) if ok[0] else None


def match_pattern(g: Term, s: Term, gvars: Iterable[str] | None = None) -> dict[str, Term] | None:
    """Pattern matching: a substitution ``sigma`` with ``g sigma == s``, or ``None``.

    Args:
        g: a higher-order pattern (generalization variables applied to distinct
            bound variables, no nesting).
        s: any closed term.
        gvars: the flexible variables (default: every free variable of ``g``).

    Raises:
        NotPattern: ``g`` has a non-pattern occurrence of a flexible variable.
    """
    flex = set(T.free_vars(g)) if gvars is None else set(gvars)
    sigma: dict[str, Term] = {}
    stack = [(g, s)]
    while stack:
        p, u = stack.pop()
        if p is u and not p.has_fv:
            continue
        if p.kind == APP and p.hkind == FVAR and p.head in flex:
            idx = []
            for a in p.args:
                i = T.eta_bvar_index(a)
                if i is None or i in idx:
                    raise NotPattern(f"occurrence of {p.head} is not a pattern")
                idx.append(i)
            arg_tys = T.split_type(p.ty)[0] if p.ty is not None else [None] * len(idx)
            img = _abstract_levels(u, {i: j for j, i in enumerate(idx)}, len(idx), arg_tys)
            if img is None:
                return None
            prev = sigma.get(p.head)
            if prev is None:
                sigma[p.head] = img
            elif prev is not img:
                return None
            continue
        if p.kind != u.kind:
            return None
        if p.kind == ABS:
            if p.ty != u.ty:
                return None
            stack.append((p.body, u.body))
            continue
        if p.hkind != u.hkind or p.head != u.head or p.ty != u.ty or len(p.args) != len(u.args):
            return None
        stack.extend(zip(p.args, u.args))
    return sigma


MAX_BOUNDED_SIZE = 400


def _loose_indices(u: Term) -> set[int]:
    out = set()
    for node, m in T.iter_subterms(u):
        if node.kind == APP and node.hkind == BVAR and node.head >= m:
            out.add(node.head - m)
    return out


def _eligible(u: Term):
    """Occurrences ``(path, value)`` of base-type subterms of ``u`` whose loose
    variables all point outside ``u`` (value = the subterm as seen at u's root)."""
    out = []
    stack = [(u, (), 0)]
    while stack:
        v, path, m = stack.pop()
        if v.kind == ABS:
            stack.append((v.body, path + (0,), m + 1))
            continue
        if all(i >= m for i in _loose_indices(v)):
            out.append((path, T.shift(v, -m) if m else v))
        for j, a in enumerate(v.args):
            stack.append((a, path + (j,), m))
    return out


def _replace_paths(u: Term, repl: dict, n: int, path: tuple = (), m: int = 0) -> Term | None:
    """u with the occurrences at ``repl`` paths replaced by parameter ``z_j`` (j = repl[path]);
    ``None`` if a loose bound variable of the context would remain (capture)."""
    j = repl.get(path)
    if j is not None:
        return T.bvar(m + n - 1 - j)
    if u.kind == ABS:
        b = _replace_paths(u.body, repl, n, path + (0,), m + 1)
        return None if b is None else T.mk_abs(u.ty, b)
    if u.hkind == BVAR and u.head >= m:
        return None
    args = []
    for i, a in enumerate(u.args):
        sub = path + (i,)
        if a.lb <= m and not any(p[: len(sub)] == sub for p in repl):
            args.append(a)
            continue
        r = _replace_paths(a, repl, n, sub, m)
        if r is None:
            return None
        args.append(r)
    return T.mk_app(u.hkind, u.head, u.ty, args)


def _images(u: Term, arity: int, ty, cap: int):
    r"""Candidate images ``(\z1..zn. u[occurrences := z], {i: value_i})`` for X(a1..an) =^= u."""
    arg_tys = T.split_type(ty)[0] if ty is not None else [None] * arity
    by_val: dict[Term, list[tuple]] = {}
    for path, val in _eligible(u):
        by_val.setdefault(val, []).append(path)
    values = list(by_val)
    count = 0
    seen = set()
    for assign in itertools.product([None] + values, repeat=arity):
        used = [a for a in assign if a is not None]
        if len(set(used)) != len(used):
            continue
        if ty is not None and any(
            a is not None and T.type_of(a) is not None and T.type_of(a) != arg_tys[i]
            for i, a in enumerate(assign)
            if a is not None and a.lb == 0
        ):
            continue
        subsets = []
        for a in assign:
            if a is None:
                subsets.append([()])
                continue
            paths = by_val[a]
            subsets.append(
                [c for r in range(1, len(paths) + 1) for c in itertools.combinations(paths, r)]
            )
        for choice in itertools.product(*subsets):
            repl: dict[tuple, int] = {}
            clash = False
            for i, paths in enumerate(choice):
                for p in paths:
                    if any(p[: len(q)] == q or q[: len(p)] == p for q in repl):
                        clash = True
                    repl[p] = i
            if clash:
                continue
            body = _replace_paths(u, repl, arity)
            if body is None:
                continue
            img = T.lams(arg_tys, body)
            if img in seen:
                continue
            seen.add(img)
            count += 1
            if count > cap:
                raise SearchLimit(f"more than {cap} candidate images; raise max_candidates")
            yield img, {i: a for i, a in enumerate(assign) if a is not None}


def _holes(b: Term, u: Term, n: int) -> dict[int, Term] | None:
    """Match an image body ``b`` (parameters = loose indices 0..n-1 at its root) against
    ``u``: the subterm of ``u`` at each parameter occurrence, or ``None`` on mismatch."""
    vals: dict[int, Term] = {}
    stack = [(b, u, 0)]
    while stack:
        p, v, m = stack.pop()
        if p.lb <= m:
            if p is not v:
                return None
            continue
        if p.kind == APP and p.hkind == BVAR and p.head >= m:
            if p.args:
                raise ValueError("bounded matching: parameters must be of base type")
            if not all(i >= m for i in _loose_indices(v)):
                return None
            val = T.shift(v, -m) if m else v
            j = n - 1 - (p.head - m)
            if vals.setdefault(j, val) is not val:
                return None
            continue
        if p.kind != v.kind:
            return None
        if p.kind == ABS:
            if p.ty != v.ty:
                return None
            stack.append((p.body, v.body, m + 1))
            continue
        if p.hkind != v.hkind or p.head != v.head or p.ty != v.ty or len(p.args) != len(v.args):
            return None
        stack.extend((x, y, m) for x, y in zip(p.args, v.args))
    return vals


def _solve(goals: list, sigma: dict, flex: set, cap: int):
    """Backtracking second-order matching over goals ``(p, u)`` at the same binder depth."""
    if not goals:
        yield sigma
        return
    (p, u), rest = goals[0], goals[1:]
    if not p.has_fv:
        if p is u:
            yield from _solve(rest, sigma, flex, cap)
        return
    if p.kind == ABS:
        if u.kind == ABS and p.ty == u.ty:
            yield from _solve([(p.body, u.body)] + rest, sigma, flex, cap)
        return
    if p.hkind != FVAR or p.head not in flex:
        if (
            u.kind == APP
            and p.hkind == u.hkind
            and p.head == u.head
            and p.ty == u.ty
            and len(p.args) == len(u.args)
        ):
            yield from _solve(list(zip(p.args, u.args)) + rest, sigma, flex, cap)
        return
    if p.ty is not None and T.type_order(p.ty) > 1:
        raise ValueError(
            f"bounded matching supports second-order variables only ({p.head}: {p.ty})"
        )
    n = len(p.args)
    img = sigma.get(p.head)
    if img is not None:
        _, body = T.strip_lams(img)
        vals = _holes(body, u, n)
        if vals is not None:
            yield from _solve([(p.args[i], v) for i, v in vals.items()] + rest, sigma, flex, cap)
        return
    for img, vals in _images(u, n, p.ty, cap):
        sigma2 = dict(sigma)
        sigma2[p.head] = img
        yield from _solve([(p.args[i], v) for i, v in vals.items()] + rest, sigma2, flex, cap)


def match(
    g: Term,
    s: Term,
    gvars: Iterable[str] | None = None,
    *,
    max_candidates: int = 20_000,
) -> dict[str, Term] | None:
    """A substitution ``sigma`` with ``g sigma == s`` (alpha), or ``None``.

    Patterns use :func:`match_pattern`; other generalizations (nested variables)
    use bounded second-order search over candidate images from ``s``.

    Raises:
        SearchLimit: the candidate cap was hit (result unknown).
    """
    flex = set(T.free_vars(g)) if gvars is None else set(gvars)
    try:
        return match_pattern(g, s, flex)
    except NotPattern:
        pass
    if g.size > MAX_BOUNDED_SIZE:
        raise ValueError(
            f"bounded second-order matching is for small terms (<= {MAX_BOUNDED_SIZE} nodes); "
            f"the generalization has {g.size}"
        )
    for sigma in _solve([(g, s)], {}, flex, max_candidates):
        if T.subst(g, sigma) is s:  # always re-checked: a returned sigma is a witness
            return sigma
    return None


def more_general(g: Term, s: Term, **kw) -> bool:
    """``g <= s``: some substitution instantiates ``g`` to ``s``."""
    return match(g, s, **kw) is not None


def equivalent(g: Term, h: Term, **kw) -> bool:
    """``g ~ h``: each is an instance of the other (equal up to renaming for patterns)."""
    return more_general(g, h, **kw) and more_general(h, g, **kw)
