r"""Anti-unification of lambda terms: first-order lgg and a top-maximal-shallow engine.

* :func:`fo_lgg`: Plotkin/Reynolds first-order lgg with the pair memo table.
* :func:`tms_lgg`: a generic top-maximal-shallow (TMS) engine in the style of Cerna &
  Kutsia (FSCD 2019): Dec / Abs keep the common top part; at a difference (Sol) an
  *argument policy* chooses the terms placed under the fresh generalization variable;
  Mer reuses one variable for differences that are equal up to a bijective renaming of
  those arguments. No generalization variable is ever nested.
* :func:`pattern_lgg`: the higher-order pattern lgg of Baumgartner, Kutsia, Levy and
  Villaret (JAR 2017) = the engine with :data:`PATTERN` (arguments: the bound
  variables occurring in the difference, in context order).

Linear time. Dec/Abs visit every node pair once (identical subterms are shared, so
``s is t`` ends the descent in O(1)); Sol traverses its two subterms once (the
differences are disjoint) to collect arguments and build a canonical key: the pair
of hash-consed closed terms ``(\p.s', \p.t')`` with parameters numbered by first
occurrence (in s, then t). Mer is a dict lookup on that key (expected O(1)), and the
bijection for the merged occurrence is read off the two first-occurrence orders.
``mer="naive"`` instead compares each new difference with every stored one by a
simultaneous traversal (quadratic in the number of differences); it exists only for
the benchmark.

The policy names other than ``pattern`` are ours: the four variants of the CK19
paper were not re-read, so none of our policies claims to be one of them.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence

from jaxlm.symbolic import terms as T
from jaxlm.symbolic.terms import ABS, APP, BVAR, Term, Type


# ----------------------------------------------------------------------- results
@dataclasses.dataclass
class StoreEntry:
    r"""One solved difference ``X(args) : s_i =^= t_i`` (after Mer).

    Attributes:
        var: the generalization variable's name.
        ty: its type (``None`` untyped).
        image_s: ``sigma_s(var)``, a closed term ``\y1..yn. s_i``.
        image_t: ``sigma_t(var)``.
        occurrences: how many differences were merged into this entry (>= 1).
    """

    var: str
    ty: Type | None
    image_s: Term
    image_t: Term
    occurrences: int = 1


@dataclasses.dataclass
class AUResult:
    """Output of an anti-unification run.

    Attributes:
        lgg: the generalization ``g``.
        store: the solved differences (one per generalization variable).
        sigma_s: substitution with ``g sigma_s == s``.
        sigma_t: substitution with ``g sigma_t == t``.
        stats: counters (``sol``, ``mer``, ``dec``, ``abs``, ``comparisons``).
    """

    lgg: Term
    store: list[StoreEntry]
    sigma_s: dict[str, Term]
    sigma_t: dict[str, Term]
    stats: dict[str, int]

    def justify(self, s: Term, t: Term) -> bool:
        """True iff ``lgg sigma_s`` and ``lgg sigma_t`` are alpha-equal to ``s`` and ``t``."""
        return T.subst(self.lgg, self.sigma_s) is s and T.subst(self.lgg, self.sigma_t) is t


# ------------------------------------------------------------------ name supply
class _Fresh:
    def __init__(self, taken: set[str], prefix: Sequence[str] = ("X", "Y", "Z", "U", "V", "W")):
        self.taken = set(taken)
        self.prefix = prefix
        self.i = 0

    def __call__(self) -> str:
        while True:
            p = self.prefix[self.i % len(self.prefix)]
            k = self.i // len(self.prefix)
            name = p if k == 0 else f"{p}{k}"
            self.i += 1
            if name not in self.taken:
                self.taken.add(name)
                return name


def _check_pair(s: Term, t: Term) -> None:
    if not isinstance(s, Term) or not isinstance(t, Term):
        raise TypeError("anti-unification needs two Term inputs (use syntax.parse)")
    if s.lb or t.lb:
        raise ValueError("anti-unification inputs must be closed terms (no loose bound variables)")
    ts, tt = T.type_of(s), T.type_of(t)
    if ts is not None and tt is not None and ts != tt:
        raise ValueError(f"inputs have different types: {ts} vs {tt}; AU needs equal types")


# -------------------------------------------------------------- first-order lgg
def fo_lgg(s: Term, t: Term) -> AUResult:
    """Plotkin/Reynolds lgg of first-order terms (no lambdas, no bound variables).

    Same head symbol and arity -> decompose; otherwise the pair ``(s, t)`` maps to a
    variable through the memo table, so the same pair always gets the same variable
    (``f(a, g(a)) =^= f(b, g(b))`` gives ``f(X, g(X))``). Free variables of the
    inputs are treated as constants. Expected linear time (hash-consed pairs).
    """
    _check_pair(s, t)
    for u in (s, t):
        for node, _ in T.iter_subterms(u):
            if node.kind == ABS or node.hkind == BVAR:
                raise ValueError(
                    "fo_lgg needs first-order terms (no lambda, no bound variable); "
                    "use pattern_lgg for lambda terms"
                )
    fresh = _Fresh({n for (_, n) in T.symbols(s)} | {n for (_, n) in T.symbols(t)})
    memo: dict[tuple[Term, Term], str] = {}
    store: list[StoreEntry] = []
    stats = {"dec": 0, "sol": 0, "mer": 0}
    out: list[Term] = []
    stack: list[tuple] = [(s, t, None)]
    while stack:
        a, b, node = stack.pop()
        if node is not None:  # build
            n = len(node.args)
            args = out[-n:]
            del out[-n:]
            out.append(T.mk_app(node.hkind, node.head, node.ty, args))
            continue
        if a is b:
            out.append(a)
            continue
        if a.hkind == b.hkind and a.head == b.head and a.ty == b.ty and len(a.args) == len(b.args):
            stats["dec"] += 1
            stack.append((None, None, a))
            for x, y in zip(reversed(a.args), reversed(b.args)):
                stack.append((x, y, None))
            continue
        name = memo.get((a, b))
        ty = a.ty if a.kind == APP and not a.args else T.type_of(a)
        if name is None:
            name = fresh()
            memo[(a, b)] = name
            store.append(StoreEntry(name, ty, a, b))
            stats["sol"] += 1
        else:
            stats["mer"] += 1
            store[[e.var for e in store].index(name)].occurrences += 1
        out.append(T.fvar(name, ty))
    sig_s = {e.var: e.image_s for e in store}
    sig_t = {e.var: e.image_t for e in store}
    return AUResult(out[0], store, sig_s, sig_t, stats)


# ------------------------------------------------------------- argument policies
@dataclasses.dataclass(frozen=True)
class ArgumentPolicy:
    """Chooses the arguments of the generalization variable at a difference.

    Attributes:
        name: identifier.
        choose: ``choose(s, t, depth) -> list[Term] | None``. ``None`` means "the bound
            variables occurring in s or t, in context order" (the pattern choice, served
            by a fast path). Otherwise a list of *base-type* terms living in the
            difference's context; every occurrence of each is abstracted. The engine
            adds any bound variable they leave uncovered (so images stay closed).
    """

    name: str
    choose: Callable[[Term, Term, int], list[Term] | None]


PATTERN = ArgumentPolicy("pattern", lambda s, t, d: None)


def _common_subterms(s: Term, t: Term, depth: int) -> list[Term]:
    """Maximal subterms shared by s and t (not s, t themselves), base type, no
    generalization variables, not under a local binder of s/t; first occurrence order."""
    in_t = set()
    for node, m in T.iter_subterms(t):
        if m == 0 and node.kind == APP and node is not t:
            in_t.add(node)
    out: list[Term] = []
    seen = set()
    stack = [s]
    while stack:
        node = stack.pop()
        if node.kind == ABS:
            continue  # only the binder-free top part
        if node is not s and node in in_t:
            if node not in seen and (node.args or node.hkind != BVAR):
                seen.add(node)
                out.append(node)
            continue
        stack.extend(reversed(node.args))
    return out


COMMON_SUBTERMS = ArgumentPolicy("common_subterms", _common_subterms)
POLICIES = {p.name: p for p in (PATTERN, COMMON_SUBTERMS)}


# ---------------------------------------------------------------- Sol helpers
def _loose_levels(terms: Sequence[Term], depth: int) -> list[int]:
    """Context levels of the loose bound variables of ``terms``, first-occurrence order."""
    order: list[int] = []
    seen: set[int] = set()
    for u in terms:
        if u.lb == 0:
            continue
        stack = [(u, 0)]
        while stack:
            node, m = stack.pop()
            if node.lb <= m:
                continue
            if node.kind == ABS:
                stack.append((node.body, m + 1))
                continue
            if node.hkind == BVAR and node.head >= m:
                lvl = depth - 1 - (node.head - m)
                if lvl not in seen:
                    seen.add(lvl)
                    order.append(lvl)
            for a in reversed(node.args):
                stack.append((a, m))
    return order


def _abstract(
    u: Term,
    depth: int,
    params: Sequence[Term],
    param_types: Sequence[Type | None],
    subterm_args: Mapping[Term, int] | None,
    level_args: Mapping[int, int],
) -> Term:
    r"""``\p_0..p_{k-1}. u[args := p]``: a closed term.

    ``level_args`` maps context levels (bound-variable arguments) to parameter
    positions; ``subterm_args`` maps base-type argument terms (as seen at the
    difference's root) to positions. ``params`` are only used for their count.
    """
    k = len(params)

    def app_fn(node: Term, m: int, args: tuple[Term, ...]) -> Term:
        if node.hkind == BVAR and node.head >= m:
            lvl = depth - 1 - (node.head - m)
            j = level_args.get(lvl)
            if j is None:
                raise ValueError("argument policy left a bound variable uncovered")
            return T.mk_app(BVAR, m + k - 1 - j, None, args)
        return T.mk_app(node.hkind, node.head, node.ty, args)

    skip = lambda node, m: node.lb <= m  # noqa: E731
    if not subterm_args:
        return T.lams(param_types, T._rebuild(u, app_fn, skip))
    # Argument subterms are replaced in the binder-free top part of u (where the
    # policy found them); below a local binder only bound variables are mapped.
    memo: dict[int, Term] = {}
    out: list[Term] = []
    stack: list[tuple[Term, bool]] = [(u, False)]
    while stack:
        x, done = stack.pop()
        if not done:
            r = memo.get(id(x))
            if r is None:
                j = subterm_args.get(x)
                if j is not None:
                    r = T.bvar(k - 1 - j)
                elif x.kind == ABS:
                    r = T._rebuild(x, app_fn, skip)
            if r is not None:
                memo[id(x)] = r
                out.append(r)
                continue
            stack.append((x, True))
            for a in reversed(x.args):
                stack.append((a, False))
        else:
            n = len(x.args)
            args = tuple(out[-n:]) if n else ()
            if n:
                del out[-n:]
            r = app_fn(x, 0, args)
            memo[id(x)] = r
            out.append(r)
    return T.lams(param_types, out[0])


# ----------------------------------------------------------------- the engine
class _Sol:
    """Solves differences: argument choice, canonical key, Mer, images."""

    def __init__(self, policy: ArgumentPolicy, mer: str, fresh: _Fresh, typed: bool):
        self.policy, self.mer, self.fresh, self.typed = policy, mer, fresh, typed
        self.buckets: dict[tuple[Term, Term], dict] = {}
        self.reps: list[dict] = []  # naive Mer
        self.store: list[StoreEntry] = []
        self.stats = {"sol": 0, "mer": 0, "comparisons": 0}

    def __call__(self, s: Term, t: Term, ctx: list[Type | None]) -> Term:
        depth = len(ctx)
        chosen = self.policy.choose(s, t, depth)
        sub_args: list[Term] = []
        if chosen is None:
            occ_levels = _loose_levels((s, t), depth)
        else:
            sub_args = [a for a in chosen if a.kind == APP and not (a.hkind == BVAR and not a.args)]
            # every bound variable of the difference is an argument too (images closed)
            occ_levels = _loose_levels((s, t), depth)
        # argument descriptors in first-occurrence order: ("b", level) / ("t", term)
        occ: list[tuple[str, object]] = [("t", a) for a in sub_args]
        occ += [("b", lv) for lv in occ_levels]
        ptys = [ctx[lv] if o == "b" else T.type_of(lv, ctx) for o, lv in occ]
        rho = T.type_of(s, ctx) if self.typed else None
        level_pos = {lv: j for j, (o, lv) in enumerate(occ) if o == "b"}
        term_pos = {a: j for j, (o, a) in enumerate(occ) if o == "t"}
        self.stats["sol"] += 1
        if self.mer == "naive":
            hit = self._naive_lookup(s, t, depth, occ, ptys)
        else:
            key = (
                _abstract(s, depth, occ, ptys, term_pos, level_pos),
                _abstract(t, depth, occ, ptys, term_pos, level_pos),
            )
            rep = self.buckets.get(key)
            hit = None if rep is None else (rep, list(range(len(occ))))
        if hit is not None:
            rep, corr = hit  # corr[r] = position in *this* occ matching rep's rank r
            self.stats["mer"] += 1
            rep["entry"].occurrences += 1
            args = [self._arg_term(occ[corr[r]], depth, ctx) for r in rep["perm"]]
            return T.fvar(rep["entry"].var, rep["entry"].ty, *args)
        # new variable. Parameter order: bound variables in context order (pattern),
        # otherwise first-occurrence order.
        if chosen is None:
            perm = sorted(range(len(occ)), key=lambda r: occ[r][1])
        else:
            perm = list(range(len(occ)))
        ord_ptys = [ptys[r] for r in perm]
        var_ty = T.arrow(*ord_ptys, rho) if self.typed and rho is not None else None
        name = self.fresh()
        lv2 = {occ[r][1]: i for i, r in enumerate(perm) if occ[r][0] == "b"}
        tp2 = {occ[r][1]: i for i, r in enumerate(perm) if occ[r][0] == "t"}
        if self.mer != "naive" and perm == list(range(len(occ))):
            img_s, img_t = key  # canonical order is already the parameter order
        else:
            img_s = _abstract(s, depth, perm, ord_ptys, tp2, lv2)
            img_t = _abstract(t, depth, perm, ord_ptys, tp2, lv2)
        entry = StoreEntry(name, var_ty, img_s, img_t)
        self.store.append(entry)
        rep = {"entry": entry, "perm": perm, "s": s, "t": t, "depth": depth, "occ": occ}
        if self.mer == "naive":
            self.reps.append(rep)
        else:
            self.buckets[key] = rep
        args = [self._arg_term(occ[r], depth, ctx) for r in perm]
        return T.fvar(name, var_ty, *args)

    def _arg_term(self, o: tuple[str, object], depth: int, ctx) -> Term:
        kind, v = o
        if kind == "t":
            return v
        idx = depth - 1 - v
        return T.eta_var(idx, ctx[v]) if self.typed else T.bvar(idx)

    # -- naive Mer: pairwise renaming-equivalence against every stored difference
    def _naive_lookup(self, s, t, depth, occ, ptys):
        if any(o == "t" for o, _ in occ):
            raise ValueError("mer='naive' supports the pattern policy only")
        for rep in self.reps:
            self.stats["comparisons"] += 1
            if len(rep["occ"]) != len(occ):
                continue
            corr = _renaming_equiv(rep, s, t, depth)
            if corr is not None:
                # corr: rep level -> our level; translate to ranks
                pos = {lv: j for j, (_, lv) in enumerate(occ)}
                return rep, [pos[corr[lv]] for _, lv in rep["occ"]]
        return None


def _renaming_equiv(rep: dict, s: Term, t: Term, depth: int) -> dict[int, int] | None:
    """Simultaneous traversal of (rep.s, rep.t) and (s, t) building a bijection on the
    loose bound variables; returns ``{rep level: our level}`` or ``None``."""
    fwd: dict[int, int] = {}
    bwd: dict[int, int] = {}
    d0 = rep["depth"]
    stack = [(rep["s"], s, 0), (rep["t"], t, 0)]
    while stack:
        a, b, m = stack.pop()
        if a.lb <= m and b.lb <= m:
            if a is not b:
                return None
            continue
        if a.kind != b.kind:
            return None
        if a.kind == ABS:
            if a.ty != b.ty:
                return None
            stack.append((a.body, b.body, m + 1))
            continue
        if a.hkind != b.hkind or len(a.args) != len(b.args):
            return None
        if a.hkind == BVAR and (a.head >= m or b.head >= m):
            if a.head < m or b.head < m:
                return None
            la, lb_ = d0 - 1 - (a.head - m), depth - 1 - (b.head - m)
            if fwd.setdefault(la, lb_) != lb_ or bwd.setdefault(lb_, la) != la:
                return None
        elif a.head != b.head or a.ty != b.ty:
            return None
        stack.extend(zip(a.args, b.args, itertools.repeat(m)))
    return fwd


def tms_lgg(
    s: Term,
    t: Term,
    policy: ArgumentPolicy | str = PATTERN,
    *,
    mer: str = "bucket",
) -> AUResult:
    """Top-maximal-shallow generalization of ``s`` and ``t`` with an argument policy.

    Args:
        s, t: closed terms of the same type (eta-long beta-normal when typed; untyped
            terms are taken as given, without beta-redexes).
        policy: an :class:`ArgumentPolicy` or its name (``"pattern"``, ``"common_subterms"``).
        mer: ``"bucket"`` (hash-bucketed canonical keys, linear) or ``"naive"``
            (pairwise comparison, quadratic; benchmark only).

    Returns:
        :class:`AUResult` with the generalization, the store and both substitutions.
    """
    _check_pair(s, t)
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {sorted(POLICIES)}")
        policy = POLICIES[policy]
    if mer not in ("bucket", "naive"):
        raise ValueError(f"mer must be 'bucket' or 'naive', got {mer!r}")
    with T.gc_paused():
        return _tms_run(s, t, policy, mer)


def _tms_run(s: Term, t: Term, policy: ArgumentPolicy, mer: str) -> AUResult:
    typed = T.type_of(s) is not None
    # fresh names avoid the inputs' free variables (constants live in another namespace)
    taken = set(T.free_vars(s)) | set(T.free_vars(t))
    sol = _Sol(policy, mer, _Fresh(taken), typed)
    stats = {"dec": 0, "abs": 0}
    out: list[Term] = []
    # stack items: ("v", s, t, ctx) visit | ("a", ty) build abs | ("p", node) build app
    ctx: list[Type | None] = []
    stack: list[tuple] = [("v", s, t, 0)]
    while stack:
        item = stack.pop()
        tag = item[0]
        if tag == "v":
            a, b, d = item[1], item[2], item[3]
            if len(item) == 5:  # body of an abstraction: its binder type enters ctx
                del ctx[d - 1:]
                ctx.append(item[4])
            else:
                del ctx[d:]
            if a is b:  # identical: Dec all the way down gives a itself
                out.append(a)
                continue
            if a.kind == ABS and b.kind == ABS and a.ty == b.ty:
                stats["abs"] += 1
                stack.append(("a", a.ty, d))
                stack.append(("v", a.body, b.body, d + 1, a.ty))
                continue
            if (
                a.kind == APP
                and b.kind == APP
                and a.hkind == b.hkind
                and a.head == b.head
                and a.ty == b.ty
                and len(a.args) == len(b.args)
            ):
                stats["dec"] += 1
                stack.append(("p", a, d))
                for x, y in zip(reversed(a.args), reversed(b.args)):
                    stack.append(("v", x, y, d))
                continue
            out.append(sol(a, b, ctx))
        elif tag == "a":
            out.append(T.mk_abs(item[1], out.pop()))
        else:
            node = item[1]
            n = len(node.args)
            args = out[-n:]
            del out[-n:]
            out.append(T.mk_app(node.hkind, node.head, node.ty, args))
    stats.update(sol.stats)
    sig_s = {e.var: e.image_s for e in sol.store}
    sig_t = {e.var: e.image_t for e in sol.store}
    return AUResult(out[0], sol.store, sig_s, sig_t, stats)


def pattern_lgg(s: Term, t: Term, *, mer: str = "bucket") -> AUResult:
    """Higher-order pattern lgg (BKLV): unique up to alpha-equivalence and renaming.

    Args:
        s, t: closed terms of the same type (typed eta-long beta-normal, or untyped
            without beta-redexes). Free variables of the inputs act as constants.
        mer: ``"bucket"`` (linear) or ``"naive"`` (quadratic Mer, for the benchmark).

    Returns:
        :class:`AUResult`: ``lgg`` with ``lgg sigma_s == s`` and ``lgg sigma_t == t``.
    """
    return tms_lgg(s, t, PATTERN, mer=mer)
