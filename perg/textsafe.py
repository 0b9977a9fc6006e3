"""Text from the store (a model's answer, a model name) made safe to print on a terminal."""

from __future__ import annotations

import re

# C0 and C1 control characters, DEL, and the bidirectional overrides and isolates that can
# reorder what a terminal shows; tab and newline stay
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character shown as a visible escape (``\\x1b``, ``\\u202e``)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
