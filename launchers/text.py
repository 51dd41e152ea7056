"""Text for the terminal: tables, values echoed on one line, numbers in one format."""

from __future__ import annotations

from collections.abc import Sequence


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def printable(text: str) -> str:
    """`text` on one line and inert in a terminal: newlines, escapes and other control characters written as
    Python writes them in a string (a value echoed in an error stays one line, and cannot recolour or move the
    cursor)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def scientific(value: float) -> str:
    """2e-04, 1.5e-04, 3e-03: one format for every learning rate in a column."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
