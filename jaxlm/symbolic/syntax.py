r"""Parser and pretty-printer for lambda terms: ``\x y. f(X(x,y), c)``.

Syntax::

    term    ::= ('\' | 'λ') binder+ '.' term  |  app
    binder  ::= ident [':' type]           (binders may be separated by ',' or spaces)
    app     ::= atom ('(' [term (',' term)*] ')')*
    atom    ::= ident | '(' term ')'
    type    ::= tatom ['->' type]          tatom ::= ident | '(' type ')'

Identifiers bound by an enclosing lambda are bound variables; other identifiers
starting with an upper-case letter are free (generalization) variables, the rest
are constants. ``(\x. f(x))(a)`` is allowed and beta-reduced.

Untyped input (no ``signature``) is only beta-normalised. Typed input gets its
binder types inferred (unannotated binders; unresolved ones default to the base
type ``default_base``) and is eta-expanded to eta-long form. Every traversal is
iterative, so deeply nested inputs (10^5 nodes) parse without recursion limits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from jaxlm.symbolic import terms as T
from jaxlm.symbolic.terms import ABS, BVAR, CONST, FVAR, Term, Type


class ParseError(ValueError):
    """Syntax error with the position and the expected token."""

    def __init__(self, text: str, pos: int, expected: str, found: str | None = None):
        self.text, self.pos, self.expected = text, pos, expected
        if found is None:
            found = repr(text[pos]) if pos < len(text) else "end of input"
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        src_line = text.splitlines()[line - 1] if text.strip() else ""
        caret = " " * (col - 1) + "^"
        super().__init__(
            f"parse error at line {line}, column {col} (offset {pos}): expected {expected}, "
            f"found {found}\n  {src_line}\n  {caret}"
        )


class TypeCheckError(ValueError):
    """Ill-typed input (with the offending position)."""


_TOKEN = re.compile(r"(->)|([A-Za-z_][A-Za-z0-9_']*)|(\\|λ)|([().,:])|(\S)")
_KINDS = (None, "->", "id", "lam", None, None)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    toks = []
    append = toks.append
    for m in _TOKEN.finditer(text):
        g = m.lastindex
        if g == 2:
            append(("id", m.group(2), m.start()))
        elif g == 4:
            v = m.group(4)
            append((v, v, m.start()))
        elif g == 5:
            raise ParseError(text, m.start(), "an identifier, '\\', '(', ')', ',', '.' or ':'")
        else:
            append((_KINDS[g], m.group(g), m.start()))
    toks.append(("eof", "", len(text)))
    return toks


# --------------------------------------------------------------------------- types
def parse_type(text: str) -> Type:
    """Parses ``i -> (i -> o) -> i``."""
    toks = _tokenize(text)
    ty, i = _parse_type_toks(text, toks, 0)
    if toks[i][0] != "eof":
        raise ParseError(text, toks[i][2], "end of type")
    return ty


def _parse_type_toks(text: str, toks, i: int) -> tuple[Type, int]:
    # type ::= tatom ('->' tatom)*, right associative; explicit stack for parentheses.
    frames: list[list[Type]] = [[]]
    while True:
        kind, val, pos = toks[i]
        if kind == "id":
            frames[-1].append(T.base(val))
            i += 1
        elif kind == "(":
            frames.append([])
            i += 1
            continue
        else:
            raise ParseError(text, pos, "a type (base type name or '(')")
        while True:
            kind, val, pos = toks[i]
            if kind == "->":
                i += 1
                break
            if kind == ")" and len(frames) > 1:
                inner = T.arrow(*frames.pop())
                frames[-1].append(inner)
                i += 1
                continue
            return T.arrow(*frames[0]) if len(frames) == 1 else _unclosed(text, pos), i


def _unclosed(text: str, pos: int):
    raise ParseError(text, pos, "')' closing the type")


# ---------------------------------------------------------------------- raw syntax
class _Raw:
    """Raw syntax node: "var" (name), "lam" (binders [(name, Type|None, pos)], body),
    "app" (head, args)."""

    __slots__ = ("kind", "pos", "name", "binders", "body", "head", "args")

    def __init__(self, kind, pos, name="", binders=(), body=None, head=None, args=()):
        self.kind, self.pos, self.name = kind, pos, name
        self.binders, self.body, self.head, self.args = binders, body, head, args


def _parse_raw(text: str) -> _Raw:
    toks = _tokenize(text)
    i = 0
    stack: list[tuple] = []  # ("lam", binders, pos) | ("args", head, args, pos) | ("paren", pos)
    while True:
        # ---- expect a term
        kind, val, pos = toks[i]
        if kind == "lam":
            i += 1
            binders = []
            while True:
                kind, val, bpos = toks[i]
                if kind == "id":
                    i += 1
                    ty = None
                    if toks[i][0] == ":":
                        ty, i = _parse_type_toks(text, toks, i + 1)
                    binders.append((val, ty, bpos))
                    if toks[i][0] == ",":
                        i += 1
                    continue
                if kind == "." and binders:
                    i += 1
                    break
                raise ParseError(
                    text, bpos, "a binder name" if not binders else "a binder name or '.'"
                )
            stack.append(("lam", binders, pos))
            continue
        if kind == "(":
            stack.append(("paren", pos))
            i += 1
            continue
        if kind != "id":
            raise ParseError(text, pos, "a term (identifier, '\\' or '(')")
        cur = _Raw("var", pos, name=val)
        i += 1
        # ---- after an atom / complete term: applications, then reduce frames
        while True:
            if toks[i][0] == "(":
                if toks[i + 1][0] == ")":  # f() == f
                    i += 2
                    continue
                stack.append(("args", cur, [], toks[i][2]))
                i += 1
                break  # expect a term
            # cur is complete: reduce
            if not stack:
                if toks[i][0] != "eof":
                    raise ParseError(text, toks[i][2], "end of input or '('")
                return cur
            top = stack[-1]
            if top[0] == "lam":
                stack.pop()
                cur = _Raw("lam", top[2], binders=top[1], body=cur)
                continue  # a lambda body extends to the right: reduce further
            if top[0] == "paren":
                if toks[i][0] != ")":
                    raise ParseError(text, toks[i][2], "')'")
                stack.pop()
                i += 1
                continue  # parenthesised term may be applied: (\x.f(x))(a)
            # "args"
            top[2].append(cur)
            if toks[i][0] == ",":
                i += 1
                break  # next argument
            if toks[i][0] == ")":
                stack.pop()
                i += 1
                cur = _Raw("app", top[3], head=top[1], args=top[2])
                continue
            raise ParseError(text, toks[i][2], "',' or ')' in an argument list")


# ------------------------------------------------------------------ type inference
class _UF:
    """Union-find over type variables (ints) and types (Type) for inference."""

    def __init__(self):
        self.parent: dict[int, object] = {}
        self.n = 0

    def fresh(self) -> int:
        self.n += 1
        self.parent[self.n] = None
        return self.n

    def find(self, t):
        while isinstance(t, int) and self.parent[t] is not None:
            t = self.parent[t]
        return t

    def unify(self, a, b, text: str, pos: int, what: str) -> None:
        todo = [(a, b)]
        while todo:
            x, y = todo.pop()
            x, y = self.find(x), self.find(y)
            if x is y or x == y:
                continue
            if isinstance(x, int):
                if self._occurs(x, y):
                    raise TypeCheckError(self._msg(text, pos, f"{what}: infinite type"))
                self.parent[x] = y
            elif isinstance(y, int):
                if self._occurs(y, x):
                    raise TypeCheckError(self._msg(text, pos, f"{what}: infinite type"))
                self.parent[y] = x
            elif isinstance(x, tuple) and isinstance(y, tuple):
                todo.append((x[0], y[0]))
                todo.append((x[1], y[1]))
            else:
                raise TypeCheckError(
                    self._msg(text, pos, f"{what}: cannot match {self.show(x)} with {self.show(y)}")
                )

    def _occurs(self, v: int, t) -> bool:
        stack = [t]
        while stack:
            u = self.find(stack.pop())
            if u == v:
                return True
            if isinstance(u, tuple):
                stack.extend(u)
        return False

    def lift(self, ty: Type):
        """Type -> internal form (base types stay Type objects, arrows become tuples)."""
        if ty.is_base:
            return ty
        return (self.lift(ty.dom), self.lift(ty.cod))

    def resolve(self, t, default: Type) -> Type:
        t = self.find(t)
        if isinstance(t, int):
            self.parent[t] = default
            return default
        if isinstance(t, Type):
            return t
        return Type(None, self.resolve(t[0], default), self.resolve(t[1], default))

    def show(self, t) -> str:
        t = self.find(t)
        if isinstance(t, int):
            return f"?{t}"
        if isinstance(t, Type):
            return str(t)
        return f"({self.show(t[0])}->{self.show(t[1])})"

    @staticmethod
    def _msg(text: str, pos: int, msg: str) -> str:
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return f"type error at line {line}, column {col}: {msg}"


def _infer(raw: _Raw, text: str, sig: Mapping[str, Type], default: Type) -> dict[int, Type]:
    """Infers every binder type; returns ``{id(binder tuple) -> Type}`` keyed per lam node."""
    uf = _UF()
    binder_vars: dict[tuple[int, int], object] = {}
    node_ty: dict[int, object] = {}
    stack: list[tuple] = [(raw, None, False)]  # env: linked list ((name, tyvar), parent)
    while stack:
        node, env, done = stack.pop()
        if node.kind == "var":
            e = env
            while e is not None and e[0][0] != node.name:
                e = e[1]
            if e is not None:
                node_ty[id(node)] = e[0][1]
            elif node.name in sig:
                node_ty[id(node)] = uf.lift(sig[node.name])
            else:
                raise TypeCheckError(
                    _UF._msg(
                        text,
                        node.pos,
                        f"unknown symbol {node.name!r}: add it to the signature "
                        "(typed mode needs a type for every constant and free variable)",
                    )
                )
            continue
        if node.kind == "lam":
            if not done:
                e = env
                tvs = []
                for j, (name, ty, _) in enumerate(node.binders):
                    tv = uf.lift(ty) if ty is not None else uf.fresh()
                    binder_vars[(id(node), j)] = tv
                    tvs.append(tv)
                    e = ((name, tv), e)
                stack.append((node, env, True))
                stack.append((node.body, e, False))
            else:
                t = node_ty[id(node.body)]
                for j in reversed(range(len(node.binders))):
                    t = (binder_vars[(id(node), j)], t)
                node_ty[id(node)] = t
            continue
        # app
        if not done:
            stack.append((node, env, True))
            stack.append((node.head, env, False))
            for a in node.args:
                stack.append((a, env, False))
        else:
            res = uf.fresh()
            want = res
            for a in reversed(node.args):
                want = (node_ty[id(a)], want)
            uf.unify(node_ty[id(node.head)], want, text, node.pos, "in this application")
            node_ty[id(node)] = res
    return {k: uf.resolve(v, default) for k, v in binder_vars.items()}


# ---------------------------------------------------------------- raw -> Term
def _to_term(raw: _Raw, sig: Mapping[str, Type] | None, binder_types: dict | None) -> Term:
    fuel = T._Fuel(T.DEFAULT_FUEL)
    out: list[Term] = []
    stack: list[tuple] = [(raw, None, 0, False)]  # env: ((name, level), parent)
    while stack:
        node, env, depth, done = stack.pop()
        if node.kind == "var":
            e = env
            while e is not None and e[0][0] != node.name:
                e = e[1]
            if e is not None:
                out.append(T.bvar(depth - 1 - e[0][1]))
            else:
                hk = FVAR if node.name[0].isupper() else CONST
                ty = sig.get(node.name) if sig is not None else None
                out.append(T.mk_app(hk, node.name, ty, ()))
            continue
        if node.kind == "lam":
            nb = len(node.binders)
            if not done:
                e = env
                for j, (name, _, _) in enumerate(node.binders):
                    e = ((name, depth + j), e)
                stack.append((node, env, depth, True))
                stack.append((node.body, e, depth + nb, False))
            else:
                body = out.pop()
                for j in reversed(range(nb)):
                    if binder_types is not None:
                        ty = binder_types[(id(node), j)]
                    else:
                        ty = node.binders[j][1]
                    body = T.mk_abs(ty, body)
                out.append(body)
            continue
        if not done:
            stack.append((node, env, depth, True))
            for a in reversed(node.args):
                stack.append((a, env, depth, False))
            stack.append((node.head, env, depth, False))
        else:
            n = len(node.args)
            args = out[-n:]
            del out[-n:]
            head = out.pop()
            if head.kind == T.APP and not head.args and head.hkind != BVAR:
                out.append(T.mk_app(head.hkind, head.head, head.ty, args))
            else:
                out.append(T.apply(head, args, fuel))
    return out[0]


def parse(
    text: str,
    signature: Mapping[str, Type | str] | None = None,
    *,
    default_base: str = "i",
) -> Term:
    r"""Parses a lambda term.

    Args:
        text: e.g. ``"\x y. f(X(x,y), c)"``.
        signature: ``None`` for untyped terms; otherwise ``{name: type}`` for every
            constant and free variable (types as :class:`Type` or strings like ``"i->i"``).
        default_base: base type for binders whose type inference leaves open.

    Returns:
        The term in beta-normal form (eta-long when typed), hash-consed.

    Raises:
        ParseError: bad syntax (position and expected token in the message).
        TypeCheckError: ill-typed input or a symbol missing from ``signature``.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() needs a string, got {type(text).__name__}")
    with T.gc_paused():
        return _parse(text, signature, default_base)


def _parse(text, signature, default_base) -> Term:
    raw = _parse_raw(text)
    if signature is None:
        return _to_term(raw, None, None)
    sig = {k: (parse_type(v) if isinstance(v, str) else v) for k, v in signature.items()}
    binder_types = _infer(raw, text, sig, T.base(default_base))
    t = _to_term(raw, sig, binder_types)
    return T.eta_long(t)


# ------------------------------------------------------------------------ printer
_BOUND_NAMES = ("x", "y", "z", "u", "v", "w")


def _bound_name(level: int, taken: set[str]) -> str:
    i = level
    while True:
        base_name = _BOUND_NAMES[i % 6] + (str(i // 6) if i >= 6 else "")
        if base_name not in taken:
            return base_name
        i += 6


def show(t: Term, *, types: bool = False, names: Sequence[str] = ()) -> str:
    r"""Pretty-prints ``t`` as ``\x y. f(X(x, y), c)``.

    Bound variables are named by binder depth (``x, y, z, u, v, w, x1, ...``),
    skipping names used by constants / free variables, so alpha-equivalent terms
    print identically.

    Args:
        t: the term.
        types: also print binder types (``\x:i.``).
        names: names for the loose bound variables of ``t`` (outermost first).
    """
    taken = {n for (_, n) in T.symbols(t)}
    names = list(names)
    parts: list[str] = []
    # stack items: str (emit) or (node, env_names_tuple_len, env) ; env as linked list
    env0 = None
    for nm in names:
        env0 = (nm, env0)
    stack: list = [(t, len(names), env0)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            parts.append(item)
            continue
        node, depth, env = item
        if node.kind == ABS:
            bs = []
            while node.kind == ABS:
                nm = _bound_name(depth, taken)
                bs.append(f"{nm}:{node.ty}" if types and node.ty is not None else nm)
                env = (nm, env)
                depth += 1
                node = node.body
            parts.append("\\" + " ".join(bs) + ". ")
            stack.append((node, depth, env))
            continue
        if node.hkind == BVAR:
            e = env
            for _ in range(node.head):
                e = e[1] if e is not None else None
            parts.append(e[0] if e is not None else f"#{node.head}")
        else:
            parts.append(str(node.head))
        if node.args:
            stack.append(")")
            for j in reversed(range(len(node.args))):
                stack.append((node.args[j], depth, env))
                if j:
                    stack.append(", ")
            stack.append("(")
    return "".join(parts)
