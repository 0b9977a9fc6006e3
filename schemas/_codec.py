"""orjson encoding and strict, typed decoding of the record dataclasses.

Decoding checks every field against the dataclass annotations (str, int, float, bool, None,
Literal, list/tuple, nested records) and the constraints attached with ``Annotated`` (integer
ranges, timestamps, base64; see :class:`Constraint`), then the record's own :meth:`Record.check`,
so a record that reaches a service or the store is well-formed; any mismatch raises
:class:`SchemaError` naming the record type and the field path.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import types
import typing
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


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _convert(value: Any, annotation: Any, path: str) -> Any:
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin is Annotated:
        inner, *constraints = get_args(annotation)
        converted = _convert(value, inner, path)
        if converted is not None:
            for constraint in constraints:
                if isinstance(constraint, Constraint):
                    constraint.check(converted, path)
        return converted
    if origin is Literal:
        if value not in get_args(annotation):
            raise SchemaError(f"{path}: {value!r} is not one of {list(get_args(annotation))}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        failures = []
        for option in options:
            try:
                return _convert(value, option, path)
            except SchemaError as exc:
                failures.append(exc)
        if len(failures) == 2 and type(None) in options:  # Optional[T]: T's own error
            raise next(f for f, o in zip(failures, options, strict=True) if o is not type(None))
        raise SchemaError(f"{path}: {value!r:.60} matches none of {annotation}")
    if annotation is type(None):
        if value is not None:
            raise SchemaError(f"{path}: expected null, got {type(value).__name__}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {type(value).__name__}")
        item_type = get_args(annotation)[0]
        items = [_convert(v, item_type, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected an object, got {type(value).__name__}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, path)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(f"{path}: expected a number, got {type(value).__name__}")
        return float(value)
    if annotation is int and isinstance(value, bool):
        raise SchemaError(f"{path}: expected an integer, got a boolean")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise SchemaError(
            f"{path}: expected {annotation.__name__}, got {type(value).__name__} {value!r:.60}"
        )
    return value


def _build(cls: Any, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected an object, got {type(data).__name__}")
    hints = _hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise SchemaError(f"{path}.{field.name}: missing")
            continue
        kwargs[field.name] = _convert(data[field.name], hints[field.name], f"{path}.{field.name}")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise SchemaError(f"{path}: unknown fields {sorted(unknown)}")
    return cls(**kwargs)


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
        body = dataclasses.asdict(self)  # type: ignore[call-overload]
        return orjson.dumps({"schema": self.SCHEMA, "version": self.VERSION, **body})

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
        record: Self = _build(cls, data, cls.SCHEMA)
        record.check()
        return record
