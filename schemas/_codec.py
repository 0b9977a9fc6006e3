"""orjson encoding and strict, typed decoding of the record dataclasses.

Decoding checks every known field against the dataclass annotations (str, int, float, bool, None,
Literal, list/tuple, nested records) and the constraints attached with ``Annotated`` (integer
ranges, timestamps, base64; see :class:`Constraint`), then the record's own :meth:`Record.check`,
so a record that reaches a service or the store is well-formed; any mismatch raises
:class:`SchemaError` naming the record type and the field path. Keys that are no field of the
record are ignored (a newer release's optional fields: see the package docstring); a message
of another version is refused.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    Protocol,
    Self,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

import orjson


class SchemaError(ValueError):
    """A message that does not match its topic's contract."""


class _Dataclass(Protocol):
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


R = TypeVar("R", bound="Record")


class Constraint:
    """A check on a decoded value, attached to a field type with ``Annotated[T, constraint]``."""

    def check(self, value: Any, path: str) -> None:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, slots=True)
class IntRange(Constraint):
    """An integer within ``[low, high]`` (e.g. what a DuckDB INTEGER column holds)."""

    low: int
    high: int

    def check(self, value: Any, path: str) -> None:
        check_int_range(value, self.low, self.high, path)


class IsoTimestamp(Constraint):
    """An ISO 8601 timestamp that ``datetime.fromisoformat`` reads."""

    def check(self, value: Any, path: str) -> None:
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise SchemaError(f"{path}: {value!r:.60} is not an ISO 8601 timestamp") from None


class Base64Text(Constraint):
    """Standard base64 text (with padding)."""

    def check(self, value: Any, path: str) -> None:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SchemaError(f"{path}: not valid base64") from None


class Finite(Constraint):
    """A finite, non-negative number (no NaN, no infinity)."""

    def check(self, value: Any, path: str) -> None:
        if not (math.isfinite(value) and value >= 0):
            raise SchemaError(f"{path}: {value!r} is not a finite non-negative number")


INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def check_int_range(value: int, low: int, high: int, path: str) -> None:
    """Raise SchemaError unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise SchemaError(f"{path}: {value} is outside [{low}, {high}]")


Converter = Callable[[Any, str], Any]
"""Checks a decoded JSON value against one annotation and returns it converted; ``path``
names the value in errors."""


@cache
def _converter(annotation: Any) -> Converter:
    """The converter of ``annotation``, built once per annotation: decoding then runs plain
    closures instead of inspecting the annotations of every field of every message."""
    origin = get_origin(annotation)
    if annotation is Any:
        return _as_is
    if origin is Annotated:
        inner, *extras = get_args(annotation)
        return _annotated(_converter(inner), tuple(c for c in extras if isinstance(c, Constraint)))
    if origin is Literal:
        return _literal(get_args(annotation))
    if origin in (Union, types.UnionType):
        return _union(annotation)
    if annotation is type(None):
        return _null
    if origin in (list, tuple):
        return _sequence(_converter(get_args(annotation)[0]), as_tuple=origin is tuple)
    if origin is dict:
        return _object
    if dataclasses.is_dataclass(annotation):
        return _builder(annotation)
    if annotation is float:
        return _number
    if annotation is int:
        return _integer
    if isinstance(annotation, type):
        return _instance_of(annotation)
    return _as_is


def _as_is(value: Any, path: str) -> Any:
    return value


def _null(value: Any, path: str) -> None:
    if value is not None:
        raise SchemaError(f"{path}: expected null, got {type(value).__name__}")


def _object(value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise SchemaError(f"{path}: expected an object, got {type(value).__name__}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{path}: expected a number, got {type(value).__name__}")
    return float(value)


def _integer(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise SchemaError(f"{path}: expected an integer, got a boolean")
    if not isinstance(value, int):
        raise SchemaError(f"{path}: expected int, got {type(value).__name__} {value!r:.60}")
    return value


def _instance_of(kind: type) -> Converter:
    def instance(value: Any, path: str) -> Any:
        if not isinstance(value, kind):
            raise SchemaError(
                f"{path}: expected {kind.__name__}, got {type(value).__name__} {value!r:.60}"
            )
        return value

    return instance


def _annotated(convert: Converter, constraints: tuple[Constraint, ...]) -> Converter:
    def annotated(value: Any, path: str) -> Any:
        converted = convert(value, path)
        if converted is not None:
            for constraint in constraints:
                constraint.check(converted, path)
        return converted

    return annotated


def _literal(allowed: tuple[Any, ...]) -> Converter:
    def literal(value: Any, path: str) -> Any:
        if value not in allowed:
            raise SchemaError(f"{path}: {value!r} is not one of {list(allowed)}")
        return value

    return literal


def _union(annotation: Any) -> Converter:
    options = get_args(annotation)
    nullable = type(None) in options
    converters = [(option, _converter(option)) for option in options]

    def union(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        failures = []
        for option, convert in converters:
            try:
                return convert(value, path)
            except SchemaError as exc:
                failures.append((option, exc))
        if len(failures) == 2 and nullable:  # Optional[T]: T's own error
            raise next(exc for option, exc in failures if option is not type(None))
        raise SchemaError(f"{path}: {value!r:.60} matches none of {annotation}")

    return union


def _sequence(convert: Converter, *, as_tuple: bool) -> Converter:
    def sequence(value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {type(value).__name__}")
        items = [convert(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if as_tuple else items

    return sequence


def _builder(cls: Any) -> Converter:
    """Build ``cls`` from a JSON object: every field converted, none required missing; keys
    that are no field (a later release's optional fields) are ignored."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [
        (
            field.name,
            _converter(hints[field.name]),
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING,
        )
        for field in dataclasses.fields(cls)
    ]

    def build(data: Any, path: str) -> Any:
        if not isinstance(data, dict):
            raise SchemaError(f"{path}: expected an object, got {type(data).__name__}")
        kwargs = {}
        for name, convert, required in fields:
            if name in data:
                kwargs[name] = convert(data[name], f"{path}.{name}")
            elif required:
                raise SchemaError(f"{path}.{name}: missing")
        return cls(**kwargs)

    return build


@cache
def _header(schema: str, version: int) -> bytes:
    """The start of every message of a record type: ``{"schema":...,"version":...,``."""
    return orjson.dumps({"schema": schema, "version": version})[:-1] + b","


class Record:
    """Base of every topic record: versioned, orjson-encoded, validated on decode."""

    SCHEMA: ClassVar[str]
    """The record type's name, carried in every message (``"perg.verdict"``...)."""
    VERSION: ClassVar[int] = 1
    """The contract's version, carried in every message; decode refuses any other."""

    def check(self) -> None:
        """Constraints that annotations cannot state (fields of nested types from elsewhere);
        raise SchemaError naming the field. Called by :meth:`decode`."""

    def encode(self) -> bytes:
        """The record as JSON bytes, with its ``schema`` name and ``version``."""
        header = _header(self.SCHEMA, self.VERSION)
        body = orjson.dumps(self)  # orjson writes a dataclass's fields natively, in order
        return header + body[1:] if body != b"{}" else header[:-1] + b"}"

    @classmethod
    def decode(cls, raw: bytes | None) -> Self:
        """Read a record from a message body; raise SchemaError naming the field at fault."""
        if not raw:
            raise SchemaError(f"{cls.SCHEMA}: empty message")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"{cls.SCHEMA}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SchemaError(f"{cls.SCHEMA}: expected a JSON object")
        schema, version = data.pop("schema", None), data.pop("version", None)
        if schema != cls.SCHEMA:
            raise SchemaError(f"{cls.SCHEMA}: record declares schema {schema!r}")
        if version != cls.VERSION:
            raise SchemaError(f"{cls.SCHEMA}: unsupported version {version!r} (want {cls.VERSION})")
        record_type: object = cls
        record: Self = _converter(record_type)(data, cls.SCHEMA)
        record.check()
        return record
