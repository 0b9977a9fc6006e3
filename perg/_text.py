"""Cheap checks on untrusted text, made before a parser that recurses sees it."""

from __future__ import annotations

__all__ = ["bracket_depth"]


def bracket_depth(text: str) -> int:
    """The deepest nesting of ``([{`` in ``text``, counting brackets inside strings too (an
    over-estimate, which is what a guard against deep recursion wants)."""
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest
