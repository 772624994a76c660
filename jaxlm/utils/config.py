"""Named registries of frozen config dataclasses and `key=value` overrides.

Every experiment selects a preset with ``--config=<name>`` and may override
fields with ``--override=field=value`` (repeatable). Unknown presets and
unknown or ill-typed fields fail with one message that names the input and
the fix, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from jaxlm.utils.cli import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A preset name, override or field value that cannot be used."""


class Registry(Generic[T]):
    """A small name -> factory registry of frozen config dataclasses.

    Example:
        >>> PRESETS = Registry("model")
        >>> @PRESETS.register("tiny")
        ... def _tiny():
        ...     return MyConfig(width=8)
        >>> PRESETS.get("tiny")
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[[], T]] = {}

    def register(self, name: str) -> Callable[[Callable[[], T]], Callable[[], T]]:
        def deco(fn: Callable[[], T]) -> Callable[[], T]:
            if name in self._factories:
                raise ConfigError(f"{self.kind} preset {name!r} is registered twice")
            self._factories[name] = fn
            return fn

        return deco

    def add(self, name: str, value: T) -> None:
        self.register(name)(lambda: value)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def get(self, name: str, overrides: Iterable[str] = ()) -> T:
        if name not in self._factories:
            raise ConfigError(
                f"unknown {self.kind} preset {name!r}; choose one of: {', '.join(self.names())}"
            )
        return apply_overrides(self._factories[name](), overrides)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(raw: str, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        if len(args) == 1:
            return _parse_value(raw, args[0], key)
        for a in args:
            try:
                return _parse_value(raw, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"override {key}={raw!r}: cannot parse as {typ}")
    if typ is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"override {key}={raw!r}: expected true/false")
    if typ in (int, float, str):
        try:
            val = typ(raw)
        except ValueError:
            raise ConfigError(f"override {key}={raw!r}: expected {typ.__name__}") from None
        if typ is float and not math.isfinite(val):
            raise ConfigError(f"override {key}={raw!r}: expected a finite number")
        return val
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        for c in choices:
            if str(c) == raw:
                return c
        raise ConfigError(f"override {key}={raw!r}: expected one of {choices}")
    if origin in (tuple, list):
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = [v for v in raw.strip("()[]").split(",") if v.strip()]
        args = typing.get_args(typ)
        elem = args[0] if args else str
        if isinstance(val, (int, float, str)):
            val = [val]
        out = [_parse_value(str(v).strip(), elem, key) for v in val]
        return tuple(out) if origin is tuple else out
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_overrides(cfg: T, overrides: Iterable[str]) -> T:
    """Returns ``cfg`` with ``field=value`` (or ``a.b=value`` for nested) applied.

    Raises:
        ConfigError: naming the key and listing the valid ones.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form field=value")
        key, raw = item.split("=", 1)
        cfg = _set(cfg, key.strip().split("."), raw.strip(), key)
    return cfg


def _set(cfg: Any, path: list[str], raw: str, full: str) -> Any:
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"override {full!r}: {type(cfg).__name__} has no fields")
    names = [f.name for f in dataclasses.fields(cfg)]
    head = path[0]
    if head not in names:
        raise ConfigError(
            f"unknown config field {full!r} for {type(cfg).__name__}; valid fields: {', '.join(names)}"
        )
    if len(path) > 1:
        return dataclasses.replace(cfg, **{head: _set(getattr(cfg, head), path[1:], raw, full)})
    typ = _field_types(type(cfg))[head]
    val = _parse_value(raw, typ, full)
    try:
        return dataclasses.replace(cfg, **{head: val})
    except ConfigError as e:  # a range check in the dataclass's __post_init__
        raise ConfigError(f"override {full}={raw}: {e}") from None


def check_finite(cfg: Any, prefix: str = "") -> None:
    """Raises ConfigError naming the first NaN/Inf float field of a (nested) config dataclass."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            check_finite(v, name + ".")
        elif isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{type(cfg).__name__}: {name}={v} is not finite; set a finite value")
        elif isinstance(v, (tuple, list)):
            for i, x in enumerate(v):
                if isinstance(x, float) and not math.isfinite(x):
                    raise ConfigError(f"{type(cfg).__name__}: {name}[{i}]={x} is not finite; "
                                      "set a finite value")


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-friendly dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
