"""orjson encoding and strict, typed decoding of the record dataclasses.

Decoding checks every field against the dataclass annotations (str, int, float, bool, None,
Literal, list/tuple, nested records), so a record that reaches a service is well-formed; any
mismatch raises :class:`SchemaError` naming the record type and the field path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar, Union, get_args, get_origin

import orjson


class SchemaError(ValueError):
    """A message that does not match its topic's contract."""


class _Dataclass(Protocol):
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


R = TypeVar("R", bound="Record")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, annotation: Any, path: str) -> Any:
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in get_args(annotation):
            raise SchemaError(f"{path}: {value!r} is not one of {list(get_args(annotation))}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(annotation):
            try:
                return _convert(value, option, path)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(f"{path}: {value!r} matches none of {annotation}")
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
    VERSION: ClassVar[int] = 1

    def encode(self) -> bytes:
        body = dataclasses.asdict(self)  # type: ignore[call-overload]
        return orjson.dumps({"schema": self.SCHEMA, "version": self.VERSION, **body})

    @classmethod
    def decode(cls, raw: bytes | None) -> Self:
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
        return record
