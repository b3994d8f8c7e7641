"""Typed options: one dataclass per method (and per backend run config), as peft's per-method configs.

Each field states its default and help text once, through :func:`option`::

    from dataclasses import dataclass
    from amoeba_plugin.options import MethodOptions, option

    @dataclass
    class FLAPOptions(MethodOptions):
        metric: str = option("fluctuation", "linear metric scoring o_proj/down_proj columns")
        batch_size: int = option(8, "calibration windows per forward pass", ge=1)

The base class's ``__post_init__`` coerces every value to its field's type (the CLI hands over
strings and JSON values: ``"8"`` becomes 8, ``"a,b"`` a list, ``"none"`` None for an optional field)
and checks ``choices`` and the bounds ``ge``/``gt``/``le``/``lt``; a subclass adds its own checks in
its ``__post_init__`` after calling ``super().__post_init__()``. Every failure is an
:class:`~amoeba_plugin.errors.AmoebaError` naming the option and the fix.

:func:`build_options` turns a mapping (a run's ``method_options``, ``--option`` pairs) into an
instance and refuses unknown names with the list of known ones; :func:`describe_options` lists the
fields (type, default, help, choices) for ``amoeba methods``; :mod:`amoeba_plugin.cli.options`
turns the same fields into click flags.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from .errors import AmoebaError

_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def option(default: Any = MISSING, help: str = "", choices=None, *, default_factory: Callable[[], Any] | Any = MISSING,
           ge=None, gt=None, le=None, lt=None, parse: Callable[[str], Any] | None = None,
           registry: str | None = None) -> Any:
    """A dataclass field with its default, help text and checks, stated once.

    A mutable default (list, dict, set) is copied for every instance. ``choices`` limits the value
    (each item, for a list); ``ge``/``gt``/``le``/``lt`` bound a number; ``parse`` reads a string
    value (from the command line) when the generic coercion cannot, e.g. widths written ``1,3/4``.
    ``registry`` (e.g. ``"metrics"``) names a plugin registry the value must be registered in, so a
    mistyped metric name fails with the options, before any model loads.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None,
                "bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None},
                "parse": parse, "registry": registry}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, (list, dict, set)):
        frozen = copy.deepcopy(default)
        return dataclasses.field(default_factory=lambda: copy.deepcopy(frozen), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_like(owner: type, name: str, default: Any = MISSING, help: str | None = None) -> Any:
    """The field ``name`` of the options dataclass ``owner`` (help, checks and default), for another
    dataclass that exposes the same setting; pass ``default`` (or ``help``) to restate it on purpose."""
    source = {f.name: f for f in fields(owner)}.get(name)
    if source is None:
        raise AttributeError(f"{owner.__name__} has no option {name!r}")
    metadata = dict(source.metadata)
    if help is not None:
        metadata["help"] = help
    if default is not MISSING:
        if isinstance(default, (list, dict, set)):
            frozen = copy.deepcopy(default)
            return dataclasses.field(default_factory=lambda: copy.deepcopy(frozen), metadata=metadata)
        return dataclasses.field(default=default, metadata=metadata)
    if source.default_factory is not MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=metadata)
    return dataclasses.field(default=source.default, metadata=metadata)


# ---------------------------------------------------------------------- types
def _hints(cls: type) -> dict:
    cached = cls.__dict__.get("_amoeba_hints")
    if cached is None:
        try:
            cached = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - an annotation that cannot be resolved here: take such values as given
            cached = {f.name: (f.type if isinstance(f.type, type) else Any) for f in fields(cls)}
        setattr(cls, "_amoeba_hints", cached)
    return cached


def field_types(cls: type) -> dict:
    """``{field name: annotation}`` of an options dataclass, resolved."""
    return dict(_hints(cls))


def optional_inner(tp):
    """``X`` for ``X | None`` (else ``tp`` itself)."""
    if _is_optional(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def type_name(tp) -> str:
    """``int``, ``float | None``, ``list[str]``: an annotation as people write it."""
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else getattr(origin, "__name__", str(origin))
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


class _Mismatch(Exception):
    pass


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(value, tp):
    """``value`` as type ``tp``, or :class:`_Mismatch`."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            if type(None) in args:
                return None
            raise _Mismatch
        choices = [a for a in args if a is not type(None)]
        for candidate in choices:  # a value already of one of the types keeps it
            if _plain_instance(value, candidate):
                return _coerce(value, candidate)
        for candidate in choices:
            try:
                return _coerce(value, candidate)
            except _Mismatch:
                continue
        raise _Mismatch
    if value is None:
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise _Mismatch from None
            if number.is_integer():
                return int(number)
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a name that reads as a number on the command line (e.g. a folder "2024")
        raise _Mismatch
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        kind = origin or tp
        if isinstance(value, str):
            items = [part.strip() for part in value.split(",") if part.strip()]
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]  # one number for a list (keep_layers=3): a list of one
        else:
            raise _Mismatch
        if kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a) for v, a in zip(items, args))
        item = args[0] if args else Any
        return kind(_coerce(v, item) for v in items)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise _Mismatch from None
        if not isinstance(value, Mapping):
            raise _Mismatch
        return dict(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _Mismatch
    return value


def _plain_instance(value, tp) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        return isinstance(value, tp) and not isinstance(value, bool)
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and isinstance(value, origin)


def _bounds_text(bounds: dict) -> str:
    ge, gt, le, lt = (bounds.get(k) for k in ("ge", "gt", "le", "lt"))
    if (ge is not None or gt is not None) and (le is not None or lt is not None):
        return (f"in {'[' if ge is not None else '('}{ge if ge is not None else gt}, "
                f"{le if le is not None else lt}{']' if le is not None else ')'}")
    return " and ".join(f"{sign} {v}" for sign, v in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if v is not None)


def _in_bounds(value, bounds: dict) -> bool:
    return all(check for check in (
        bounds.get("ge") is None or value >= bounds["ge"], bounds.get("gt") is None or value > bounds["gt"],
        bounds.get("le") is None or value <= bounds["le"], bounds.get("lt") is None or value < bounds["lt"]))


def _example(f: dataclasses.Field):
    default = field_default(f)
    return default if default is not None and default != [] and default != () else None


def check_field(owner: type, f: dataclasses.Field, value):
    """``value`` coerced to the field's type and checked against its choices and bounds."""
    tp = _hints(owner).get(f.name, Any)
    parse = f.metadata.get("parse")
    if parse is not None and isinstance(value, str) and not (_is_optional(tp) and value.strip().lower() in _NONE_WORDS):
        value = parse(value)
    try:
        value = _coerce(value, tp)
    except _Mismatch:
        example = _example(f)
        if example is None:
            example = _type_example(tp)
        raise AmoebaError(f"option {f.name}={value!r} is not {_article(type_name(tp))}",
                          f"pass {f.name} as {_article(type_name(tp))}"
                          + (f", e.g. {f.name}={_text(example)}" if example is not None else "")) from None
    choices = f.metadata.get("choices")
    if choices and value is not None:
        for item in (value if isinstance(value, (list, tuple, set, frozenset)) else [value]):
            if item not in choices:
                raise AmoebaError(f"unknown {f.name} '{item}'", f"use one of: {', '.join(map(str, choices))}")
    kind = f.metadata.get("registry")
    if kind and value is not None:
        from .plugins import get

        get(kind, value)  # an unknown name raises UnknownNameError, listing the registered ones
    bounds = f.metadata.get("bounds") or {}
    if bounds and value is not None:
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(item, (int, float)) and not _in_bounds(item, bounds):
                example = _example(f)
                raise AmoebaError(f"option {f.name} must be {_bounds_text(bounds)}, got {item!r}",
                                  f"pass {f.name} {_bounds_text(bounds)}"
                                  + (f" (default {_text(example)})" if example is not None else ""))
    return value


def _type_example(tp):
    """A value of type ``tp`` to show in a fix (for a field whose default is empty or None)."""
    tp = optional_inner(tp)
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    simple = {int: 1, float: 0.5, bool: True, str: "name"}
    if origin in simple:
        return simple[origin]
    if origin in (list, tuple, set, frozenset):
        item = simple.get(args[0] if args else str)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return [simple.get(a, "x") for a in args]
        return None if item is None else ([0, -1] if item == 1 else [item, item])
    if origin is dict:
        return {"key": 1}
    return None


def _article(text: str) -> str:
    return ("an " if text[:1] in "aeiou" else "a ") + text


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return json.dumps(value) if isinstance(value, (dict, bool)) or value is None else str(value)


def field_default(f: dataclasses.Field):
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


# ---------------------------------------------------------------------- the base classes
@dataclass
class Options:
    """Base of a typed options dataclass: every field coerced to its type and checked on construction.
    ``to_dict``, ``defaults`` and ``pick`` are its methods, so they are not field names."""

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, check_field(type(self), f, getattr(self, f.name)))

    def to_dict(self) -> dict:
        """The values by name (containers copied)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def defaults(cls) -> dict:
        return {f.name: field_default(f) for f in fields(cls)}

    def __getitem__(self, name: str):
        """``options["steps"]`` reads like ``options.steps``: methods written when options were a dict
        keep working (read-only)."""
        if name not in {f.name for f in fields(self)}:
            raise KeyError(name)
        return getattr(self, name)

    def pick(self, target: type) -> dict:
        """The values of the fields ``target`` (another options dataclass) also has, to build it."""
        wanted = {f.name for f in fields(target)}
        return {name: value for name, value in self.to_dict().items() if name in wanted}


@dataclass
class MethodOptions(Options):
    """Base of every method's options (and the options of a method that takes none)."""


def build_options(cls: type, values: Mapping | Options | None = None, method: str | None = None):
    """An instance of ``cls`` from ``values`` (a mapping, or an instance returned as it is).

    Unknown names are refused with the list of known ones; a bad value raises the field's
    :class:`AmoebaError`, naming ``method`` when given."""
    if isinstance(values, cls):
        return values
    if isinstance(values, Options):
        values = values.to_dict()
    values = dict(values or {})
    known = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise AmoebaError(f"unknown option(s){f' for {method!r}' if method else ''}: {', '.join(map(str, unknown))}",
                          f"use only: {', '.join(known) or '(no options)'}")
    try:
        return cls(**values)
    except AmoebaError as exc:
        if not method:
            raise
        raise type(exc)(f"method {method!r}: {exc.problem}", exc.fix) from None


def describe_options(cls: type) -> dict:
    """``{name: {"type", "default", "help"[, "choices"][, "bounds"]}}`` for every field of ``cls``."""
    out = {}
    hints = _hints(cls)
    for f in fields(cls):
        record = {"type": type_name(hints.get(f.name, Any)), "default": _jsonable(field_default(f)),
                  "help": f.metadata.get("help", "")}
        if f.metadata.get("choices"):
            record["choices"] = list(f.metadata["choices"])
        if f.metadata.get("bounds"):
            record["bounds"] = dict(f.metadata["bounds"])
        if f.metadata.get("registry"):
            record["registry"] = f.metadata["registry"]
        out[f.name] = record
    return out


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def options_class_from_dict(name: str, defaults: Mapping) -> type:
    """A :class:`MethodOptions` subclass with one untyped field per entry of ``defaults``: what a
    method that still declares a ``default_options`` dict gets, so it keeps working."""
    # a list default types its field as a list, so "a,b" is split into items, never read character by character
    specs = [(key, list if isinstance(value, (list, tuple)) else Any, option(value, "")) for key, value in defaults.items()]
    return dataclasses.make_dataclass(name, specs, bases=(MethodOptions,))


__all__ = [
    "MethodOptions",
    "Options",
    "build_options",
    "describe_options",
    "field_default",
    "field_types",
    "optional_inner",
    "option",
    "option_like",
    "options_class_from_dict",
    "type_name",
]
