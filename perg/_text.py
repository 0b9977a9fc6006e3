"""Small text helpers: a cheap check on untrusted text before a parser that recurses sees
it, and the plain-text tables the command line prints."""

from __future__ import annotations

from collections.abc import Container, Sequence

__all__ = ["bracket_depth", "text_table"]


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


def text_table(table: Sequence[Sequence[str]], *, right: Container[int] = ()) -> str:
    """``table`` (a header line, then rows) in columns two spaces apart, padded to the widest
    cell; the columns in ``right`` are right-aligned (numbers), the others left-aligned."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = (
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in table
    )
    return "\n".join(lines)
