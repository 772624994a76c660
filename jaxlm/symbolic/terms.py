"""Simply typed / untyped lambda terms in beta-normal (eta-long when typed) form.

Representation: de Bruijn indices, hash-consed nodes. Two terms are
alpha-equivalent iff they are the *same Python object* (``alpha_eq(s, t)`` is
``s is t``), so equality and hashing are O(1).

A term is either

* ``ABS``: ``\\x:ty. body`` (``ty`` is a :class:`Type` or ``None`` when untyped), or
* ``APP``: ``h(a1, ..., an)`` with a head ``h`` that is a constant (``"c"``), a bound
  variable (``"b"``, de Bruijn index) or a free / generalization variable (``"v"``).

There is no redex node: every constructor result is beta-normal. Substitution
is *hereditary* (it beta-reduces the redexes it creates), so its recursion depth
is bounded by the order of the types involved, never by the term size; all
traversals over the term structure are iterative (explicit stacks), so terms with
10^5+ nodes are fine. Untyped substitution can loop (``(\\x.x(x))(\\x.x(x))``);
it runs on a step budget and raises :class:`NormalisationError` when spent.

Names of bound variables are not stored (hash-consing is modulo alpha); the
printer names them by binder depth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence

ABS = 0
APP = 1
CONST, BVAR, FVAR = "c", "b", "v"


# ----------------------------------------------------------------------------- types
@dataclasses.dataclass(frozen=True)
class Type:
    """A simple type: a base type ``Type(name)`` or an arrow ``Type(None, dom, cod)``."""

    name: str | None
    dom: Type | None = None
    cod: Type | None = None

    @property
    def is_base(self) -> bool:
        return self.name is not None

    def __str__(self) -> str:
        if self.is_base:
            return self.name
        d = str(self.dom) if self.dom.is_base else f"({self.dom})"
        return f"{d}->{self.cod}"

    def __repr__(self) -> str:
        return f"Type({str(self)!r})"


def base(name: str = "i") -> Type:
    """The base type ``name``."""
    return Type(name)


def arrow(*tys: Type) -> Type:
    """``arrow(a, b, c)`` is ``a -> b -> c`` (right associative)."""
    if not tys:
        raise ValueError("arrow() needs at least one type")
    out = tys[-1]
    for t in reversed(tys[:-1]):
        out = Type(None, t, out)
    return out


def split_type(ty: Type) -> tuple[list[Type], Type]:
    """``a -> b -> i`` -> ``([a, b], i)``."""
    args = []
    while not ty.is_base:
        args.append(ty.dom)
        ty = ty.cod
    return args, ty


def type_order(ty: Type | None) -> int:
    """Order of a type: 0 for base types, 1 + max order of the domains otherwise."""
    if ty is None or ty.is_base:
        return 0
    args, _ = split_type(ty)
    return 1 + max(type_order(a) for a in args)


# ----------------------------------------------------------------------------- terms
class NormalisationError(ValueError):
    """Untyped beta-reduction ran out of its step budget (a non-normalising term)."""


class Term:
    """A hash-consed beta-normal term node. Build with :func:`mk_abs` / :func:`mk_app`."""

    __slots__ = (
        "kind", "ty", "body", "hkind", "head", "args", "size", "lb", "has_fv", "__weakref__"
    )

    def __repr__(self) -> str:
        from jaxlm.symbolic.syntax import show  # local import: syntax depends on terms

        return f"Term({show(self)!r})"

    def __reduce__(self):  # pickling goes through the constructors (keeps hash-consing)
        if self.kind == ABS:
            return (mk_abs, (self.ty, self.body))
        return (mk_app, (self.hkind, self.head, self.ty, self.args))


_TABLE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@contextlib.contextmanager
def gc_paused():
    """Pauses Python's cyclic GC during bulk term construction (restored on exit).

    Term nodes form no reference cycles, so the collector only rescans the growing
    heap; with it running, building 10^5-node terms becomes superlinear.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def mk_abs(ty: Type | None, body: Term) -> Term:
    """``\\x:ty. body`` (``x`` is de Bruijn index 0 in ``body``)."""
    key = (ABS, ty, body)
    node = _TABLE.get(key)
    if node is None:
        node = Term()
        node.kind = ABS
        node.ty = ty
        node.body = body
        node.hkind = None
        node.head = None
        node.args = ()
        node.size = 1 + body.size
        node.lb = body.lb - 1 if body.lb > 0 else 0
        node.has_fv = body.has_fv
        _TABLE[key] = node
    return node


def mk_app(hkind: str, head: str | int, hty: Type | None = None, args: Sequence[Term] = ()) -> Term:
    """``head(args...)``: ``hkind`` is ``"c"`` (constant), ``"b"`` (bound, index) or ``"v"`` (free).

    ``hty`` is the type of a constant / free variable head (``None`` for bound heads,
    whose type lives on their binder, and for untyped terms).
    """
    args = tuple(args)
    if hkind == BVAR:
        hty = None
    key = (APP, hkind, head, hty, args)
    node = _TABLE.get(key)
    if node is None:
        node = Term()
        node.kind = APP
        node.ty = hty
        node.body = None
        node.hkind = hkind
        node.head = head
        node.args = args
        size = 1
        lb = head + 1 if hkind == BVAR else 0
        fv = hkind == FVAR
        for a in args:
            size += a.size
            if a.lb > lb:
                lb = a.lb
            fv = fv or a.has_fv
        node.size = size
        node.lb = lb
        node.has_fv = fv
        _TABLE[key] = node
    return node


def const(name: str, ty: Type | None = None, *args: Term) -> Term:
    return mk_app(CONST, name, ty, args)


def fvar(name: str, ty: Type | None = None, *args: Term) -> Term:
    return mk_app(FVAR, name, ty, args)


def bvar(index: int, *args: Term) -> Term:
    return mk_app(BVAR, index, None, args)


def lams(tys: Sequence[Type | None], body: Term) -> Term:
    """``\\x1:ty1 ... xn:tyn. body`` (``xn`` is index 0 in ``body``)."""
    for ty in reversed(tys):
        body = mk_abs(ty, body)
    return body


def strip_lams(t: Term) -> tuple[list[Type | None], Term]:
    """``\\x1..xn. b`` -> ``([ty1..tyn], b)``."""
    tys = []
    while t.kind == ABS:
        tys.append(t.ty)
        t = t.body
    return tys, t


def alpha_eq(s: Term, t: Term) -> bool:
    """Alpha-equivalence: identity of hash-consed de Bruijn nodes (O(1))."""
    return s is t


def is_closed(t: Term) -> bool:
    """True when ``t`` has no loose bound variables."""
    return t.lb == 0


def table_size() -> int:
    """Number of live hash-consed nodes (for tests / memory checks)."""
    return len(_TABLE)


# ----------------------------------------------------------------------- traversals
def iter_subterms(t: Term, depth: int = 0) -> Iterator[tuple[Term, int]]:
    """Pre-order ``(subterm, binder depth)`` pairs (a tree walk; shared nodes repeat)."""
    stack = [(t, depth)]
    while stack:
        node, d = stack.pop()
        yield node, d
        if node.kind == ABS:
            stack.append((node.body, d + 1))
        else:
            for a in reversed(node.args):
                stack.append((a, d))


def symbols(t: Term) -> dict[tuple[str, str], Type | None]:
    """Constants and free variables of ``t``: ``{(kind, name): type}``."""
    out: dict[tuple[str, str], Type | None] = {}
    seen = set()
    stack = [t]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.kind == ABS:
            stack.append(node.body)
        else:
            if node.hkind != BVAR:
                out[(node.hkind, node.head)] = node.ty
            stack.extend(node.args)
    return out


def free_vars(t: Term) -> dict[str, Type | None]:
    """Free (generalization) variables of ``t`` with their types (skips fvar-free parts)."""
    out: dict[str, Type | None] = {}
    seen = set()
    stack = [t]
    while stack:
        node = stack.pop()
        if not node.has_fv or id(node) in seen:
            continue
        seen.add(id(node))
        if node.kind == ABS:
            stack.append(node.body)
        else:
            if node.hkind == FVAR:
                out[node.head] = node.ty
            stack.extend(node.args)
    return out


def _rebuild(
    t: Term,
    app_fn: Callable[[Term, int, tuple[Term, ...]], Term],
    skip: Callable[[Term, int], bool],
    depth: int = 0,
) -> Term:
    """Bottom-up rebuild of ``t``; ``app_fn(node, depth, new_args)`` makes each APP node.

    ``skip(node, depth)`` true keeps ``node`` unchanged without descending. Results
    are memoised per ``(node, depth)`` so shared (hash-consed) subterms cost once.
    """
    memo: dict[tuple[int, int], Term] = {}
    out: list[Term] = []
    stack: list[tuple[Term, int, bool]] = [(t, depth, False)]
    while stack:
        node, d, done = stack.pop()
        key = (id(node), d)
        if not done:
            r = memo.get(key)
            if r is not None:
                out.append(r)
                continue
            if skip(node, d):
                out.append(node)
                continue
            stack.append((node, d, True))
            if node.kind == ABS:
                stack.append((node.body, d + 1, False))
            else:
                for a in reversed(node.args):
                    stack.append((a, d, False))
        else:
            if node.kind == ABS:
                r = mk_abs(node.ty, out.pop())
            else:
                n = len(node.args)
                if n:
                    new_args = tuple(out[-n:])
                    del out[-n:]
                else:
                    new_args = ()
                r = app_fn(node, d, new_args)
            memo[key] = r
            out.append(r)
    return out[0]


def shift(t: Term, delta: int, cutoff: int = 0) -> Term:
    """Adds ``delta`` to every bound index ``>= cutoff`` (counted at the root of ``t``)."""
    if delta == 0 or t.lb <= cutoff:
        return t

    def app_fn(node: Term, d: int, args: tuple[Term, ...]) -> Term:
        h = node.head
        if node.hkind == BVAR and h >= d + cutoff:
            h += delta
            if h < 0:
                raise ValueError("shift produced a negative de Bruijn index")
        return mk_app(node.hkind, h, node.ty, args)

    return _rebuild(t, app_fn, lambda node, d: node.lb <= d + cutoff)


class _Fuel:
    """Step budget and nesting budget for (possibly untyped) hereditary reduction."""

    __slots__ = ("left", "depth")

    MAX_DEPTH = 150  # nested redex chains; typed terms need at most their type order

    def __init__(self, left: int):
        self.left = left
        self.depth = 0

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise NormalisationError(
                "beta-normalisation did not finish within its step budget; the (untyped) "
                "input probably has no normal form. Check the term or pass typed input."
            )


DEFAULT_FUEL = 1_000_000


def apply(f: Term, args: Sequence[Term], fuel: _Fuel | None = None) -> Term:
    """Beta-normal form of ``f(args...)`` (hereditary: reduces created redexes)."""
    fuel = fuel or _Fuel(DEFAULT_FUEL)
    args = tuple(args)
    while args:
        if f.kind == APP:
            return mk_app(f.hkind, f.head, f.ty, f.args + args)
        tys, body = strip_lams(f)
        k = min(len(tys), len(args))
        # keep the binders that receive no argument
        inner = body
        for ty in reversed(tys[k:]):
            inner = mk_abs(ty, inner)
        fuel.spend()
        fuel.depth += 1
        if fuel.depth > _Fuel.MAX_DEPTH:
            raise NormalisationError(
                "beta-normalisation nested more than "
                f"{_Fuel.MAX_DEPTH} redexes deep; the (untyped) input probably has no normal "
                "form. Check the term or pass typed input."
            )
        try:
            f = instantiate(inner, args[:k], fuel)
        finally:
            fuel.depth -= 1
        args = args[k:]
    return f


def instantiate(body: Term, args: Sequence[Term], fuel: _Fuel | None = None) -> Term:
    """Replaces the ``k = len(args)`` outermost loose binders of ``body`` by ``args``.

    ``body`` lives under binders ``x1..xk`` (``xk`` = index 0); ``args[i]`` replaces
    ``x_{i+1}``. ``args`` live in the context *outside* those binders. Loose indices
    beyond them are lowered by ``k``. Redexes created at bound heads are reduced.
    """
    fuel = fuel or _Fuel(DEFAULT_FUEL)
    k = len(args)
    if k == 0:
        return body
    if body.lb == 0:
        return body
    args = tuple(args)

    def app_fn(node: Term, d: int, new_args: tuple[Term, ...]) -> Term:
        if node.hkind != BVAR or node.head < d:
            return mk_app(node.hkind, node.head, node.ty, new_args)
        j = node.head - d
        if j >= k:
            return mk_app(BVAR, node.head - k, None, new_args)
        repl = shift(args[k - 1 - j], d)
        if not new_args:
            return repl
        return apply(repl, new_args, fuel)

    return _rebuild(body, app_fn, lambda node, d: node.lb <= d)


def subst(t: Term, sigma: Mapping[str, Term], fuel: _Fuel | None = None) -> Term:
    """Capture-avoiding substitution of free variables, followed by beta-normalisation.

    Args:
        t: a term.
        sigma: free-variable name -> closed term (typically ``\\y1..yn. u``).

    Returns:
        ``t sigma`` in beta-normal form (eta-long if ``t`` and the images are).
    """
    fuel = fuel or _Fuel(DEFAULT_FUEL)
    for name, img in sigma.items():
        if img.lb:
            raise ValueError(f"substitution image for {name} has loose bound variables")
    if not sigma or not t.has_fv:
        return t

    def app_fn(node: Term, d: int, new_args: tuple[Term, ...]) -> Term:
        if node.hkind == FVAR and node.head in sigma:
            return apply(sigma[node.head], new_args, fuel)
        return mk_app(node.hkind, node.head, node.ty, new_args)

    return _rebuild(t, app_fn, lambda node, d: not node.has_fv)


def rename_fvars(t: Term, mapping: Mapping[str, str]) -> Term:
    """Renames free variables (a bijective renaming is a special substitution)."""

    def app_fn(node: Term, d: int, new_args: tuple[Term, ...]) -> Term:
        if node.hkind == FVAR and node.head in mapping:
            return mk_app(FVAR, mapping[node.head], node.ty, new_args)
        return mk_app(node.hkind, node.head, node.ty, new_args)

    return _rebuild(t, app_fn, lambda node, d: not node.has_fv)


def eta_var(index: int, ty: Type | None) -> Term:
    """Eta-long form of the bound variable ``index`` of type ``ty``."""
    if ty is None or ty.is_base:
        return bvar(index)
    arg_tys, _ = split_type(ty)
    n = len(arg_tys)
    args = [eta_var(n - 1 - i, arg_tys[i]) for i in range(n)]
    return lams(arg_tys, mk_app(BVAR, index + n, None, args))


def eta_long(t: Term, ctx: Sequence[Type | None] = ()) -> Term:
    """Eta-expands a beta-normal typed term to eta-long form.

    Args:
        t: a beta-normal term whose constants / free variables carry types.
        ctx: types of the loose bound variables of ``t`` (outermost first).

    Raises:
        ValueError: a head is applied to more arguments than its type allows.
    """
    # Iterative post-order over the tree with a persistent context (linked list).
    out: list[Term] = []
    stack: list[tuple] = [(t, _ctx_chain(ctx), False)]
    while stack:
        node, cx, done = stack.pop()
        if not done:
            stack.append((node, cx, True))
            if node.kind == ABS:
                stack.append((node.body, (node.ty, cx), False))
            else:
                for a in reversed(node.args):
                    stack.append((a, cx, False))
            continue
        if node.kind == ABS:
            out.append(mk_abs(node.ty, out.pop()))
            continue
        n = len(node.args)
        args = out[-n:] if n else []
        if n:
            del out[-n:]
        hty = node.ty if node.hkind != BVAR else _ctx_lookup(cx, node.head)
        if hty is None:
            out.append(mk_app(node.hkind, node.head, node.ty, args))
            continue
        arg_tys, _ = split_type(hty)
        if n > len(arg_tys):
            raise ValueError(
                f"ill-typed term: head {node.head!r} of type {hty} is applied to {n} arguments"
            )
        missing = arg_tys[n:]
        m = len(missing)
        if m == 0:
            out.append(mk_app(node.hkind, node.head, node.ty, args))
            continue
        head = node.head + m if node.hkind == BVAR else node.head
        new_args = [shift(a, m) for a in args]
        new_args += [eta_var(m - 1 - i, missing[i]) for i in range(m)]
        out.append(lams(missing, mk_app(node.hkind, head, node.ty, new_args)))
    return out[0]


def _ctx_chain(ctx: Sequence[Type | None]):
    cx = None
    for ty in ctx:
        cx = (ty, cx)
    return cx


def _ctx_lookup(cx, index: int) -> Type | None:
    for _ in range(index):
        if cx is None:
            raise ValueError(f"loose bound variable index {index} has no binder")
        cx = cx[1]
    if cx is None:
        raise ValueError(f"loose bound variable index {index} has no binder")
    return cx[0]


def type_of(t: Term, ctx: Sequence[Type | None] = ()) -> Type | None:
    """Type of an eta-long typed term (``None`` for untyped terms)."""
    binders = []
    while t.kind == ABS:
        binders.append(t.ty)
        t = t.body
    if t.hkind == BVAR:
        full = list(ctx) + binders
        if t.head >= len(full):
            raise ValueError("loose bound variable without a type in ctx")
        hty = full[len(full) - 1 - t.head]
    else:
        hty = t.ty
    if hty is None or any(b is None for b in binders):
        return None
    arg_tys, res = split_type(hty)
    rest = arg_tys[len(t.args):]
    return arrow(*binders, arrow(*rest, res)) if binders else arrow(*rest, res)


def is_pattern(t: Term, gvars: set[str] | None = None) -> bool:
    """Miller pattern: every generalization-variable occurrence has distinct bound
    variables (eta-expanded where of arrow type) as arguments, and no nesting."""
    for node, d in iter_subterms(t):
        if node.kind == APP and node.hkind == FVAR and (gvars is None or node.head in gvars):
            seen = set()
            for a in node.args:
                idx = eta_bvar_index(a)
                if idx is None or idx in seen:
                    return False
                seen.add(idx)
    return True


def eta_bvar_index(a: Term) -> int | None:
    """If ``a`` is (the eta-expansion of) a bound variable, its index at ``a``'s root."""
    n = 0
    while a.kind == ABS:
        n += 1
        a = a.body
    if a.kind != APP or a.hkind != BVAR or a.head < n or len(a.args) != n:
        return None
    for i, x in enumerate(a.args):
        if eta_bvar_index(x) != n - 1 - i:
            return None
    return a.head - n
