"""Which model hosts a worker may call: a strict reading of a URL's host, and the allow-list.

A run names the URLs its workers call, and whoever can write to the runs topic can name any
URL; so a worker calls only hosts on its allow-list, ``PERG_MODEL_HOSTS``: comma-separated
``host[:port]`` patterns, where ``*`` stands for one or more characters within one label of a
name (``*.models.internal``, ``llama-*:8080``, ``10.0.0.*``), a lone ``*`` for any host, and
``loopback`` for every loopback address (``localhost``, 127.0.0.0/8, ``::1``). A pattern
without a port allows any port. Default: ``loopback``.

The host is read strictly, so that the host checked is the host connected to:

- only ``http`` and ``https``; no user info (``user@host``), query or fragment; no backslash,
  whitespace, control or percent-escaped character anywhere;
- a name is ASCII letters, digits, ``-`` and ``_`` in non-empty labels, lower-cased, one
  trailing dot dropped (an internationalised name is written in its ``xn--`` form);
- an IPv4 address only as a dotted quad: a host whose last label is a number (``2130706433``,
  ``0x7f.1``, ``0177.0.0.1``, ``127.1``) is refused unless canonical, since resolvers read
  those forms as addresses;
- an IPv6 address in brackets, without a zone; an IPv4-mapped one is read as its IPv4 address;
- the port decimal, 1-65535 (default 80 for http, 443 for https);
- and aiohttp's own URL parser (yarl) must read the same host and port, else the URL is
  refused as ambiguous.

The client does not follow redirects (perg.client's transport), so an allowed server cannot
send a worker on to another host either.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from yarl import URL

from perg.errors import InputError

__all__ = ["DEFAULT_MODEL_HOSTS", "Host", "HostNotAllowed", "ModelHosts", "parse_url_host"]

DEFAULT_MODEL_HOSTS = "loopback"
LOOPBACK = "loopback"
_SCHEMES = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9_-]+")
_PATTERN_LABEL = re.compile(r"[a-z0-9_*-]+")
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")  # what resolvers read as (part of) an address
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\%]")


class HostNotAllowed(InputError):
    """A model URL whose host cannot be read unambiguously, or is not on the allow-list.
    Permanent for a worker: no call is made, the message is dead-lettered."""


@dataclass(frozen=True, slots=True)
class Host:
    """A URL's host in canonical form (lower-case name, dotted quad, compressed IPv6) and port."""

    name: str
    port: int

    def __str__(self) -> str:
        return f"[{self.name}]:{self.port}" if ":" in self.name else f"{self.name}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.name == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.name).is_loopback
        except ValueError:
            return False


def _canonical_name(raw: str, where: str) -> str:
    """``raw`` (a URL's host or a pattern's, brackets removed) in canonical form."""
    if ":" in raw:  # IPv6
        if "%" in raw:
            raise HostNotAllowed(f"{where}: an IPv6 zone ({raw!r}) is not allowed")
        try:
            address = ipaddress.IPv6Address(raw)
        except ValueError:
            raise HostNotAllowed(f"{where}: {raw!r} is not an IPv6 address") from None
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else str(address)
    if not raw.isascii():  # lower() maps some non-ASCII letters to ASCII ones
        raise HostNotAllowed(f"{where}: host {raw!r} is not ASCII (write it in its xn-- form)")
    name = raw.lower()
    name = name[:-1] if name.endswith(".") else name
    labels = name.split(".")
    if not name or any(not _LABEL.fullmatch(label) for label in labels):
        raise HostNotAllowed(
            f"{where}: host {raw!r} is not a plain ASCII name or address (letters, digits, "
            "'-', '_' between dots; an international name in its xn-- form)"
        )
    if _NUMBER.fullmatch(labels[-1]):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise HostNotAllowed(
                f"{where}: host {raw!r} reads as an IP address but is not a dotted quad "
                "(write e.g. 127.0.0.1)"
            ) from None
    return name


@lru_cache(maxsize=1024)
def parse_url_host(url: str) -> Host:
    """The host and port ``url`` connects to; :class:`HostNotAllowed` when it is ambiguous."""
    where = f"URL {url[:200]!r}"
    if _FORBIDDEN.search(url):
        raise HostNotAllowed(f"{where}: whitespace, control characters, '\\' and '%' are refused")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise HostNotAllowed(f"{where}: only http:// and https:// URLs are called")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "?" in rest or "#" in rest:
        raise HostNotAllowed(f"{where}: a model URL has no query or fragment")
    if "@" in authority:
        raise HostNotAllowed(f"{where}: user info (user@host) is not allowed in a model URL")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise HostNotAllowed(f"{where}: unclosed '[' in the host")
        raw, port_text = authority[1:close], authority[close + 1 :]
        if port_text and not port_text.startswith(":"):
            raise HostNotAllowed(f"{where}: unexpected {port_text!r} after the IPv6 address")
        port_text = port_text[1:]
    else:
        raw, _, port_text = authority.partition(":")
        if ":" in port_text or ("]" in raw):
            raise HostNotAllowed(f"{where}: an IPv6 address must be written in brackets")
    name = _canonical_name(raw, where)
    default_port = _SCHEMES[scheme.lower()]
    port = _port(port_text, where) if port_text else default_port
    _same_for_aiohttp(url, Host(name, port), where)
    return Host(name, port)


def _port(text: str, where: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise HostNotAllowed(f"{where}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _same_for_aiohttp(url: str, host: Host, where: str) -> None:
    """Refuse a URL that aiohttp's parser (yarl) reads as another host or port."""
    try:
        parsed = URL(url)
        theirs_name, theirs_port = parsed.raw_host or "", parsed.port
    except (ValueError, TypeError):
        raise HostNotAllowed(f"{where}: the HTTP client cannot read this URL") from None
    try:
        theirs = _canonical_name(theirs_name, where)
    except HostNotAllowed:
        theirs = theirs_name
    if (theirs, theirs_port) != (host.name, host.port):
        raise HostNotAllowed(
            f"{where}: ambiguous, read as {host} here but as {theirs_name}:{theirs_port} by "
            "the HTTP client"
        )


@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str
    name: re.Pattern[str] | None  # None: loopback
    port: int | None  # None: any port

    def allows(self, host: Host) -> bool:
        if self.port is not None and self.port != host.port:
            return False
        if self.name is None:
            return host.is_loopback
        return self.name.fullmatch(host.name) is not None


def _pattern(text: str, source: str) -> _Pattern:
    where = f"{source}: pattern {text!r}"
    if text.lower() == LOOPBACK:
        return _Pattern(text, None, None)
    port_text = ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (text[close + 1 :] and not text[close + 1 :].startswith(":")):
            raise InputError(f"{where} is not [IPv6] or [IPv6]:PORT")
        raw, port_text = text[1:close], text[close + 2 :]
        name = re.escape(_canonical_name(raw, where))
    else:
        raw, _, port_text = text.partition(":")
        raw = raw.lower().removesuffix(".")
        labels = raw.split(".")
        if raw == "*":
            name = ".+"
        elif not raw or any(not _PATTERN_LABEL.fullmatch(label) for label in labels):
            raise InputError(
                f"{where} is not host[:port] (letters, digits, '-', '_' and '*' between dots)"
            )
        elif "*" in raw:
            name = r"\.".join(re.escape(label).replace(r"\*", "[^.]+") for label in labels)
        else:
            name = re.escape(_canonical_name(raw, where))
    port = None
    if port_text:
        try:
            port = _port(port_text, where)
        except HostNotAllowed as exc:
            raise InputError(str(exc)) from None
    return _Pattern(text, re.compile(name), port)


@dataclass(frozen=True, slots=True)
class ModelHosts:
    """The allow-list of model hosts (``PERG_MODEL_HOSTS``, see the module docstring)."""

    patterns: tuple[_Pattern, ...]

    @classmethod
    def parse(cls, text: str, source: str = "PERG_MODEL_HOSTS") -> ModelHosts:
        """Comma-separated patterns; a bad one is an :class:`InputError` naming ``source``."""
        entries = [e.strip() for e in text.split(",") if e.strip()]
        return cls(tuple(_pattern(entry, source) for entry in entries))

    def check(self, url: str) -> Host:
        """The host of ``url`` when this list allows it, else :class:`HostNotAllowed`."""
        host = parse_url_host(url)
        if not any(pattern.allows(host) for pattern in self.patterns):
            listed = ", ".join(p.text for p in self.patterns) or "nothing"
            raise HostNotAllowed(
                f"model host {host} of {url[:200]!r} is not allowed here: PERG_MODEL_HOSTS "
                f"allows {listed}"
            )
        return host

    def __str__(self) -> str:
        return ",".join(p.text for p in self.patterns)
