"""One codec for every record: dataclass <-> JSON-able data, and the JSON Schema of it, both driven
by the dataclasses' type hints (so the file format, the loader and the schema cannot drift apart).

- Non-finite floats are written as ``{"$float": "NaN"}`` (``"Infinity"``, ``"-Infinity"``): strict
  JSON (a browser's ``JSON.parse`` rejects bare ``NaN``), and unambiguous: a string field whose
  value is ``"NaN"`` stays a string.
- Fields marked ``metadata={"transient": True}`` are never written (live handles); names listed in
  a class's ``COMPUTED`` are properties written for readers and ignored when loading.
- Loading ignores keys it does not know (a newer writer) and names the first missing one.
- Schema version 1 files (non-finite floats as bare strings) are still read.

Why not a library (cattrs, pydantic, msgspec): records are a dozen plain dataclasses with a
handful of field types, and the record layer must import without torch and without heavy
dependencies (it is what a laptop re-renders a report with); one type walk serves the codec and
the schema generator alike in about 150 lines.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, Union

from .errors import GradcheckError

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_HINTS: dict[type, dict[str, Any]] = {}


class RecordError(GradcheckError):
    """A file or dict is not the record it was read as."""


def _hints(cls: type) -> dict[str, Any]:
    h = _HINTS.get(cls)
    if h is None:
        h = _HINTS[cls] = typing.get_type_hints(cls)
    return h


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("transient")]


def encode_float(x: float) -> Any:
    if math.isfinite(x):
        return x
    return {"$float": "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")}


def encode(x: Any) -> Any:
    """Any record, list, dict or scalar as strict-JSON-able data."""
    if isinstance(x, Record):
        return x.to_dict()
    if isinstance(x, float):
        return encode_float(x)
    if isinstance(x, dict):
        return {str(k): encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [encode(v) for v in x]
    return x


def _untag(x: Any, legacy: bool) -> Any:
    """A non-finite float from its encoding, else ``x``."""
    if isinstance(x, dict) and len(x) == 1 and "$float" in x and x["$float"] in NONFINITE:
        return NONFINITE[x["$float"]]
    if legacy and isinstance(x, str) and x in NONFINITE:
        return NONFINITE[x]
    return x


def decode(tp: Any, x: Any, legacy: bool = False, where: str = "") -> Any:
    """``x`` (JSON data) as the type ``tp`` (a record class, a typing form or a scalar type)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _decode_any(x, legacy)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if x is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return decode(inner[0], x, legacy, where) if len(inner) == 1 else _decode_any(x, legacy)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(x, list):
            raise RecordError(f"{where or 'value'}: expected a list, got {type(x).__name__}")
        return [decode(item, v, legacy, f"{where}[{i}]") for i, v in enumerate(x)]
    if origin is dict:
        _, item = typing.get_args(tp) or (str, Any)
        if not isinstance(x, dict):
            raise RecordError(f"{where or 'value'}: expected an object, got {type(x).__name__}")
        return {k: decode(item, v, legacy, f"{where}.{k}") for k, v in x.items()}
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp._decode(x, legacy, where)
    if tp is float:
        x = _untag(x, legacy)
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x
    return x


def _decode_any(x: Any, legacy: bool) -> Any:
    x = _untag(x, legacy)
    if isinstance(x, dict):
        return {k: _decode_any(v, legacy) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode_any(v, legacy) for v in x]
    return x


class Record:
    """Base of every record dataclass: ``to_dict()`` / ``from_dict()`` through the codec."""

    COMPUTED: ClassVar[tuple[str, ...]] = ()
    #: top-level records (a file of their own) name the tool that writes them
    TOOL: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: encode(getattr(self, f.name)) for f in _fields(type(self))}
        for name in self.COMPUTED:
            d[name] = encode(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """The record from its data; a top-level record checks its schema version first."""
        legacy = False
        if cls.TOOL is not None:
            from .records import SCHEMA_VERSION

            if not isinstance(d, dict):
                raise RecordError(f"not a {cls.TOOL} record: the JSON is a "
                                  f"{type(d).__name__}, not an object")
            tool = d.get("tool", cls.TOOL)
            if tool != cls.TOOL:
                raise RecordError(f"this is a {tool!r} record, not a {cls.TOOL!r} one")
            version = d.get("schema_version")
            if version not in (1, SCHEMA_VERSION):
                raise RecordError(f"report schema_version {version!r} is not supported (this "
                                  f"gradcheck reads versions 1 and {SCHEMA_VERSION})")
            legacy = version == 1
        return cls._decode(d, legacy, "")

    @classmethod
    def _decode(cls, d: Any, legacy: bool, where: str) -> Any:
        if not isinstance(d, dict):
            raise RecordError(f"{where or cls.__name__}: expected an object for "
                              f"{cls.__name__}, got {type(d).__name__}")
        hints = _hints(cls)
        kw = {}
        for f in _fields(cls):
            if f.name in d:
                kw[f.name] = decode(hints[f.name], d[f.name], legacy,
                                    f"{where}.{f.name}" if where else f.name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{cls.__name__} lacks the field {f.name!r}"
                                  + (f" (at {where})" if where else ""))
        if cls.TOOL is not None:  # in memory it is a record of today's schema
            from .records import SCHEMA_VERSION

            kw["schema_version"] = SCHEMA_VERSION
        return cls(**kw)


# -- JSON Schema ---------------------------------------------------------------------------------

_FLOAT = {"anyOf": [{"type": "number"}, {"$ref": "#/$defs/nonfinite"}]}
_SCALARS = {str: {"type": "string"}, int: {"type": "integer"}, bool: {"type": "boolean"},
            float: _FLOAT, type(None): {"type": "null"}}


def _schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema(a, defs) for a in typing.get_args(tp)]}
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return {"type": "array", "items": _schema(item, defs)}
    if origin is dict:
        _, item = typing.get_args(tp) or (str, Any)
        return {"type": "object", "additionalProperties": _schema(item, defs)}
    if isinstance(tp, type) and issubclass(tp, Record):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder: breaks cycles
            defs[name] = _record_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    raise TypeError(f"no JSON Schema for {tp!r}")


def _record_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = _hints(cls)
    props: dict[str, Any] = {}
    required = []
    for f in _fields(cls):
        s = _schema(hints[f.name], defs)
        doc = _field_doc(cls, f.name)
        if doc:
            s = {**s, "description": doc}
        props[f.name] = s
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    for name in cls.COMPUTED:
        props[name] = {"type": "boolean", "description": "computed: "
                       + ((getattr(cls, name).__doc__ or name).strip().split("\n")[0])}
        required.append(name)
    out = {"type": "object",
           "description": " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split()),
           "properties": props, "required": required,
           "additionalProperties": False}
    return out


def _field_doc(cls: type, name: str) -> str | None:
    """The trailing ``# comment`` of a field's line in the class source, if any."""
    import inspect

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return None
    for line in src.splitlines():
        stripped = line.strip()
        if stripped.startswith(f"{name}:") and "  # " in stripped:
            return stripped.split("  # ", 1)[1].strip()
    return None


def json_schema(cls: type, title: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the top-level record ``cls``."""
    defs: dict[str, Any] = {}
    root = _record_schema(cls, defs)
    defs["nonfinite"] = {"type": "object", "description": "a non-finite float",
                         "properties": {"$float": {"enum": list(NONFINITE)}},
                         "required": ["$float"], "additionalProperties": False}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **root,
            "$defs": dict(sorted(defs.items()))}
