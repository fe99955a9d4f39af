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
import json
import math
import types
import typing
from typing import Any, ClassVar, Union

from .errors import GradcheckError

#: the version of the file format (report.json, optimize.json) this gradcheck writes
SCHEMA_VERSION = 2
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


_SCALAR_WORDS = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}


def _kind(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(x), type(x).__name__)


def _scalar(tp: type, x: Any, legacy: bool, where: str) -> Any:
    """``x`` checked to be a ``tp`` (str, int, bool or float); a float may be a tagged non-finite
    value, never a bare NaN/Infinity (JSON has none; a file that has one is refused on reading)."""
    if tp is float:
        x = _untag(x, legacy)
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return float(x)
    elif tp is int and isinstance(x, int) and not isinstance(x, bool):
        return x
    elif tp in (str, bool) and type(x) is tp:
        return x
    raise RecordError(f"{where or 'value'}: expected {_SCALAR_WORDS[tp]}, got {_kind(x)}")


def decode(tp: Any, x: Any, legacy: bool = False, where: str = "") -> Any:
    """``x`` (JSON data) as the type ``tp`` (a record class, a typing form or a scalar type),
    checked: a value of another type than its field's is a :class:`RecordError` naming where."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _decode_any(x, legacy, where)
    if origin in (Union, types.UnionType):
        return _decode_union(typing.get_args(tp), x, legacy, where)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(x, list):
            raise RecordError(f"{where or 'value'}: expected a list, got {_kind(x)}")
        return [decode(item, v, legacy, f"{where}[{i}]") for i, v in enumerate(x)]
    if origin is dict:
        _, item = typing.get_args(tp) or (str, Any)
        if not isinstance(x, dict):
            raise RecordError(f"{where or 'value'}: expected an object, got {_kind(x)}")
        return {k: decode(item, v, legacy, f"{where}.{k}") for k, v in x.items()}
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp._decode(x, legacy, where)
    if tp in _SCALAR_WORDS:
        return _scalar(tp, x, legacy, where)
    raise TypeError(f"no decoder for {tp!r}")


def _decode_union(args: tuple[Any, ...], x: Any, legacy: bool, where: str) -> Any:
    if x is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    errors = []
    for a in inner:
        try:
            return decode(a, x, legacy, where)
        except RecordError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise RecordError(f"{where or 'value'}: {_kind(x)} is none of the types allowed there")


def _decode_any(x: Any, legacy: bool, where: str = "") -> Any:
    """Free-form data (a configuration, a measured value): JSON values only (non-finite floats
    come tagged: :func:`parse_json` refuses a bare NaN in a file)."""
    x = _untag(x, legacy)
    if isinstance(x, dict):
        return {k: _decode_any(v, legacy, f"{where}.{k}") for k, v in x.items()}
    if isinstance(x, list):
        return [_decode_any(v, legacy, f"{where}[{i}]") for i, v in enumerate(x)]
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    raise RecordError(f"{where or 'value'}: {_kind(x)} is not JSON data")


# -- reading a file someone sent ----------------------------------------------------------------

#: limits on a record file: far above any report gradcheck writes (a 35-step run is ~1 MB, 9 deep,
#: its longest string a 4,000-character traceback), far below what would exhaust a reader
MAX_BYTES = 256 * 2**20
MAX_DEPTH = 32
MAX_STRING = 100_000


def _no_constant(name: str) -> Any:
    raise RecordError(f"a bare {name} (JSON has none; gradcheck writes {{\"$float\": \"{name}\"}})")


def parse_json(text: str | bytes) -> Any:
    """The JSON data of a record file, refused in one line when it is not JSON, too large, nested
    deeper than :data:`MAX_DEPTH`, has a string longer than :data:`MAX_STRING` or a bare
    NaN/Infinity."""
    if len(text) > MAX_BYTES:
        raise RecordError(f"{len(text):,} bytes, more than the {MAX_BYTES:,} a record may have")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise RecordError(f"nested deeper than {MAX_DEPTH} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON: {exc}") from None
    stack = [(data, 1)]
    while stack:
        x, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RecordError(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(x, dict):
            for k, v in x.items():
                if len(k) > MAX_STRING:
                    raise RecordError(f"a key of {len(k):,} characters (at most {MAX_STRING:,})")
                stack.append((v, depth + 1))
        elif isinstance(x, list):
            stack.extend((v, depth + 1) for v in x)
        elif isinstance(x, str) and len(x) > MAX_STRING:
            raise RecordError(f"a string of {len(x):,} characters (at most {MAX_STRING:,})")
    return data


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
