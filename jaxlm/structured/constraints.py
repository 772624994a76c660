"""Constraint kinds (``Regex``, ``JsonSchema``, ``Choice``) and their regular expressions.

The regex -> automaton step is ``outlines-core``'s (a Rust regex engine plus its JSON
schema -> regex translation); this module only checks schemas before anything is
compiled (outlines-core silently ignores some keywords, e.g. numeric bounds, and turns
an empty ``enum`` into the empty string) and turns Python types into schemas.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any


class ConstraintError(ValueError):
    """A constraint that cannot be compiled: unsatisfiable, unsupported, or malformed."""


# keywords the JSON-schema -> regex translation honours (everything else is refused)
_SUPPORTED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "minLength", "maxLength", "pattern", "enum", "const", "anyOf",
    "oneOf", "allOf", "$ref", "$defs", "definitions", "format",
    # annotations, ignored on purpose
    "title", "description", "$schema", "$id", "default", "examples", "$comment",
}
_FORMATS = {"date-time", "date", "time", "uuid", "email", "uri"}
_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}
MAX_SCHEMA_BYTES = 1 << 16


def _fail(path: str, msg: str) -> None:
    raise ConstraintError(f"JSON schema at {path or '/'}: {msg}")


def check_schema(schema: Mapping[str, Any], path: str = "") -> None:
    """Refuses (ConstraintError naming the location) a schema that is unsatisfiable or uses
    keywords the compiler would silently ignore."""
    if isinstance(schema, bool):
        if not schema:
            _fail(path, "`false` accepts nothing; remove it or give a real schema")
        return
    if not isinstance(schema, Mapping):
        _fail(path, f"must be an object, got {type(schema).__name__}")
    unknown = sorted(set(schema) - _SUPPORTED)
    if unknown:
        _fail(path, f"unsupported keyword(s) {unknown} (numeric bounds, not/if/then, "
              "patternProperties, ... are not enforced by the token automaton); remove them "
              "and validate the parsed value instead")
    typ = schema.get("type")
    for t in ([typ] if isinstance(typ, str) else typ or []):
        if t not in _TYPES:
            _fail(path, f"unknown type {t!r}; use one of {sorted(_TYPES)}")
    if "format" in schema and schema["format"] not in _FORMATS:
        _fail(path, f"unsupported format {schema['format']!r}; use one of {sorted(_FORMATS)}")
    for lo, hi in (("minLength", "maxLength"), ("minItems", "maxItems")):
        a, b = schema.get(lo), schema.get(hi)
        for k in (lo, hi):
            v = schema.get(k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                _fail(path, f"{k} must be a non-negative integer, got {v!r}")
        if a is not None and b is not None and a > b:
            _fail(path, f"{lo}={a} > {hi}={b}: no value can satisfy both")
    if "enum" in schema:
        if not isinstance(schema["enum"], list) or not schema["enum"]:
            _fail(path, "enum must be a non-empty list (an empty enum accepts nothing)")
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            subs = schema[key]
            if not isinstance(subs, list) or not subs:
                _fail(path, f"{key} must be a non-empty list of schemas")
            for i, s in enumerate(subs):
                check_schema(s, f"{path}/{key}/{i}")
    props = schema.get("properties", {})
    if not isinstance(props, Mapping):
        _fail(path, "properties must be an object")
    for name, s in props.items():
        check_schema(s, f"{path}/properties/{name}")
    req = schema.get("required", [])
    if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
        _fail(path, "required must be a list of property names")
    if schema.get("additionalProperties") is False:
        missing = [r for r in req if r not in props]
        if missing:
            _fail(path, f"required {missing} are not in properties and additionalProperties "
                  "is false: no object can satisfy it")
    ap = schema.get("additionalProperties")
    if isinstance(ap, Mapping):
        check_schema(ap, f"{path}/additionalProperties")
    if "items" in schema:
        check_schema(schema["items"], f"{path}/items")
    for i, s in enumerate(schema.get("prefixItems", [])):
        check_schema(s, f"{path}/prefixItems/{i}")
    if schema.get("maxItems") == 0 and schema.get("minItems", 0) > 0:
        _fail(path, "minItems > 0 with maxItems = 0")
    for key in ("$defs", "definitions"):
        for name, s in schema.get(key, {}).items():
            check_schema(s, f"{path}/{key}/{name}")
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
        _fail(path, f"$ref {ref!r}: only local references ('#/...') are allowed")


# ------------------------------------------------------------------------- Python types
def schema_from_type(tp: Any) -> dict[str, Any]:
    """JSON schema of a dataclass, TypedDict or plain annotation (str, int, float, bool,
    list[T], Literal[...], Optional[T], nested dataclasses/TypedDicts)."""
    origin = typing.get_origin(tp)
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is type(None):
        return {"type": "null"}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (list, Sequence, tuple) and origin is not tuple:
        (item,) = typing.get_args(tp) or (Any,)
        return {"type": "array", "items": schema_from_type(item)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [schema_from_type(a) for a in typing.get_args(tp)]}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        fields = dataclasses.fields(tp)
        req = [f.name for f in fields if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
        return {"type": "object", "title": tp.__name__,
                "properties": {f.name: schema_from_type(hints[f.name]) for f in fields},
                "required": req, "additionalProperties": False}
    if typing.is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        return {"type": "object", "title": tp.__name__,
                "properties": {k: schema_from_type(v) for k, v in hints.items()},
                "required": sorted(tp.__required_keys__), "additionalProperties": False}
    raise ConstraintError(
        f"cannot turn {tp!r} into a JSON schema; use str/int/float/bool, list[T], "
        "Literal[...], Optional[T], a dataclass or a TypedDict, or pass a schema dict")


# ------------------------------------------------------------------------ constraints
_META = set("\\.+*?()|[]{}^$#&-~")


def escape(text: str) -> str:
    """Escapes ``text`` as a literal for the automaton's regex syntax."""
    return "".join("\\" + c if c in _META else c for c in text)


@dataclasses.dataclass(frozen=True)
class Regex:
    """Output must match ``pattern`` in full (Rust ``regex`` syntax, as outlines-core)."""

    pattern: str

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConstraintError(f"Regex needs a non-empty pattern string, got {self.pattern!r}")

    def to_regex(self) -> str:
        return self.pattern

    def key(self) -> str:
        return "regex:" + self.pattern


@dataclasses.dataclass(frozen=True)
class Choice:
    """Output is exactly one of ``options``."""

    options: tuple[str, ...]

    def __init__(self, options: Sequence[str]):
        if isinstance(options, str) or not options or not all(
                isinstance(o, str) and o for o in options):
            raise ConstraintError(
                f"Choice needs a non-empty list of non-empty strings, got {options!r}")
        object.__setattr__(self, "options", tuple(dict.fromkeys(options)))

    def to_regex(self) -> str:
        return "(" + "|".join(escape(o) for o in self.options) + ")"

    def key(self) -> str:
        return "choice:" + json.dumps(self.options)


@dataclasses.dataclass(frozen=True)
class JsonSchema:
    """Output is JSON valid under ``schema`` (a dict, JSON text, dataclass or TypedDict).

    Attributes:
        schema: canonical JSON text of the schema.
        max_depth: nesting depth for recursive schemas and untyped values.
        whitespace: regex of the whitespace allowed between JSON tokens (default: at most
            one space, so small models cannot loop on blanks).
    """

    schema: str
    max_depth: int = 3
    whitespace: str = r"[ ]?"

    def __init__(self, schema: Any, max_depth: int = 3, whitespace: str = r"[ ]?"):
        if isinstance(schema, type):
            schema = schema_from_type(schema)
        elif isinstance(schema, str):
            if len(schema) > MAX_SCHEMA_BYTES:
                raise ConstraintError(f"JSON schema text is {len(schema)} bytes; the limit is "
                                      f"{MAX_SCHEMA_BYTES}")
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(f"JSON schema text does not parse: {e}") from None
        if not isinstance(schema, Mapping | bool):
            raise ConstraintError(f"JsonSchema needs a dict, JSON text, dataclass or TypedDict; "
                                  f"got {type(schema).__name__}")
        if not isinstance(max_depth, int) or not 1 <= max_depth <= 16:
            raise ConstraintError(f"max_depth must be an int in [1, 16], got {max_depth!r}")
        check_schema(schema)
        text = json.dumps(schema, sort_keys=False, separators=(",", ":"))
        if len(text) > MAX_SCHEMA_BYTES:
            raise ConstraintError(f"JSON schema is {len(text)} bytes; the limit is "
                                  f"{MAX_SCHEMA_BYTES}")
        object.__setattr__(self, "schema", text)
        object.__setattr__(self, "max_depth", max_depth)
        object.__setattr__(self, "whitespace", whitespace)

    def to_regex(self) -> str:
        from outlines_core.json_schema import build_regex_from_schema

        try:
            return build_regex_from_schema(self.schema, self.whitespace, self.max_depth)
        except (ValueError, TypeError) as e:
            raise ConstraintError(f"JSON schema not supported: {str(e).splitlines()[0]}") from None

    def key(self) -> str:
        return f"json:{self.max_depth}:{self.whitespace}:{self.schema}"


Constraint = Regex | JsonSchema | Choice


def as_constraint(c: Any) -> Constraint | None:
    """Accepts a constraint, None, or a shorthand: a dataclass/TypedDict type -> JsonSchema."""
    if c is None or isinstance(c, Regex | JsonSchema | Choice):
        return c
    if isinstance(c, type):
        return JsonSchema(c)
    raise ConstraintError(f"expected Regex(...), JsonSchema(...), Choice([...]) or None, "
                          f"got {type(c).__name__}")


RESPONSE_FORMATS = ("text", "json_object", "json_schema", "regex", "choice")


def from_response_format(rf: Mapping[str, Any] | None) -> Constraint | None:
    """The local constraint of an OpenAI-style ``response_format``.

    ``{"type": "json_schema", "json_schema": {"schema": {...}, "name": ...}}`` -> JsonSchema;
    ``{"type": "json_object"}`` -> any JSON object; ``{"type": "text"}`` / None -> None;
    extensions: ``{"type": "regex", "regex": "..."}`` -> Regex,
    ``{"type": "choice", "choice": ["a", "b"]}`` -> Choice.
    """
    if rf is None:
        return None
    if not isinstance(rf, Mapping) or rf.get("type") not in RESPONSE_FORMATS:
        raise ConstraintError(
            f"response_format must be a dict with type in {RESPONSE_FORMATS}, got {rf!r}")
    kind = rf["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonSchema({"type": "object"})
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, Mapping) or "schema" not in js:
            raise ConstraintError('response_format json_schema needs {"json_schema": '
                                  '{"schema": {...}}}')
        return JsonSchema(js["schema"])
    if kind == "regex":
        if not isinstance(rf.get("regex"), str):
            raise ConstraintError('response_format regex needs {"type": "regex", "regex": "..."}')
        return Regex(rf["regex"])
    opts = rf.get("choice")
    if not isinstance(opts, list | tuple):
        raise ConstraintError('response_format choice needs {"type": "choice", "choice": [...]}')
    return Choice(opts)
