r"""Matching and the generality preorder ``g <= s`` ("g is more general than s").

* :func:`match_pattern`: higher-order pattern matching, linear and deterministic:
  an occurrence ``X(x1..xn)`` (distinct bound variables) against ``u`` forces
  ``X := \x1..xn. u`` (capture-avoiding: fails if ``u`` mentions another bound variable).
* :func:`match`: bounded second-order matching for non-pattern (e.g. nested)
  generalizations of small size. Candidate images of a variable are built from the
  target's subterms with some occurrences of argument terms abstracted, plus the
  projections; a candidate substitution is accepted only after checking
  ``g sigma == s`` exactly, so a returned substitution is always a witness (sound).
  Completeness holds when every variable of ``g`` has an occurrence whose instance
  survives in ``s`` (true for the chain family and the enumeration problems here);
  the search is capped by ``max_candidates``.
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


def _occurrences(g: Term, flex: set[str]) -> dict[str, tuple[int, object]]:
    """Flexible variable -> (arity, type) from its occurrences in ``g``."""
    out: dict[str, tuple[int, object]] = {}
    for node, _ in T.iter_subterms(g):
        if node.kind == APP and node.hkind == FVAR and node.head in flex:
            out.setdefault(node.head, (len(node.args), node.ty))
    return out


def _loose_indices(u: Term) -> set[int]:
    out = set()
    for node, m in T.iter_subterms(u):
        if node.kind == APP and node.hkind == BVAR and node.head >= m:
            out.add(node.head - m)
    return out


def _candidates(s: Term, arity: int, ty, cap: int) -> list[Term]:
    r"""Candidate images ``\z1..zn. w[a_i := z_i]`` from the subterms ``w`` of ``s``."""
    arg_tys = T.split_type(ty)[0] if ty is not None else [None] * arity
    res_ty = T.split_type(ty)[1] if ty is not None else None
    out: dict[Term, None] = {}
    # projections first (cheap, and needed when an occurrence's instance vanished)
    for i in range(arity):
        if ty is None or arg_tys[i] == res_ty:
            out[T.lams(arg_tys, T.bvar(arity - 1 - i))] = None
    # subterm occurrences of s with their binder context
    occs = []  # (w, ctx types outermost-first)
    stack = [(s, ())]
    while stack:
        node, cx = stack.pop()
        if node.kind == ABS:
            stack.append((node.body, cx + (node.ty,)))
            continue
        occs.append((node, cx))
        for a in node.args:
            stack.append((a, cx))
    seen_w = set()
    for w, cx in occs:
        if (w, len(cx)) in seen_w:
            continue
        seen_w.add((w, len(cx)))
        if ty is not None and T.type_of(w, cx) != res_ty:
            continue
        # eligible argument positions inside w: (path-free) subterms whose loose
        # variables all point outside w, with their value as seen at w's root.
        positions = []  # (value at w's root, occurrence id)
        pstack = [(w, 0, cx)]
        while pstack:
            v, m, vcx = pstack.pop()
            if v.kind == ABS:
                pstack.append((v.body, m + 1, vcx + (v.ty,)))
                continue
            li = _loose_indices(v)
            if all(i >= m for i in li):
                val = T.shift(v, -m) if m else v
                positions.append(val)
            for a in v.args:
                pstack.append((a, m, vcx))
        values = list(dict.fromkeys(positions))
        choices = [None] + values
        for assign in itertools.product(choices, repeat=arity):
            used = [a for a in assign if a is not None]
            if len(set(used)) != len(used):
                continue
            if ty is not None and any(
                a is not None and T.type_of(a, cx) != arg_tys[i] for i, a in enumerate(assign)
            ):
                continue
            img = _replace_all(w, assign, arity, arg_tys)
            if img is not None:
                out[img] = None
                if len(out) > cap:
                    raise SearchLimit(f"more than {cap} candidate images; raise max_candidates")
    return list(out)


def _replace_all(w: Term, assign, n: int, arg_tys) -> Term | None:
    """Replace every occurrence (top-down) of ``assign[i]`` in ``w`` by ``z_i``."""
    pos = {a: i for i, a in enumerate(assign) if a is not None}
    out: list[Term] = []
    stack: list[tuple] = [(w, 0, False)]
    while stack:
        v, m, done = stack.pop()
        if not done:
            val = v
            if m and v.kind == APP:
                li = _loose_indices(v)
                val = T.shift(v, -m) if all(i >= m for i in li) else None
            j = pos.get(val) if val is not None and v.kind == APP else None
            if j is not None:
                out.append(T.bvar(m + n - 1 - j))
                continue
            if v.kind == ABS:
                stack.append((v, m, True))
                stack.append((v.body, m + 1, False))
                continue
            if v.hkind == BVAR and v.head >= m:
                return None  # a bound variable of the context would be captured
            stack.append((v, m, True))
            for a in reversed(v.args):
                stack.append((a, m, False))
        else:
            if v.kind == ABS:
                out.append(T.mk_abs(v.ty, out.pop()))
                continue
            k = len(v.args)
            args = out[-k:] if k else []
            if k:
                del out[-k:]
            # bound heads here are local to w (loose ones returned None above): unchanged
            out.append(T.mk_app(v.hkind, v.head, v.ty, args))
    return T.lams(arg_tys, out[0])


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
    occ = _occurrences(g, flex)
    names = sorted(occ)
    cands = []
    for x in names:
        arity, ty = occ[x]
        if ty is not None and T.type_order(ty) > 1:
            raise ValueError(f"bounded matching supports second-order variables only ({x}: {ty})")
        cands.append(_candidates(s, arity, ty, max_candidates))
    total = 1
    for c in cands:
        total *= max(1, len(c))
    if total > max_candidates * 10:
        raise SearchLimit(f"{total} candidate substitutions; raise max_candidates")
    for combo in itertools.product(*cands):
        sigma = dict(zip(names, combo))
        if T.subst(g, sigma) is s:
            return sigma
    return None


def more_general(g: Term, s: Term, **kw) -> bool:
    """``g <= s``: some substitution instantiates ``g`` to ``s``."""
    return match(g, s, **kw) is not None


def equivalent(g: Term, h: Term, **kw) -> bool:
    """``g ~ h``: each is an instance of the other (equal up to renaming for patterns)."""
    return more_general(g, h, **kw) and more_general(h, g, **kw)
