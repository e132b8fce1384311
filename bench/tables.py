"""Plain-text and Markdown tables for the benchmarks' printed and saved results."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    first: int,
    width: int,
    header: bool = True,
) -> str:
    """First column left-aligned in ``first`` characters, the rest right-aligned."""
    cells = [list(columns)] if header else []
    cells += [list(r) for r in rows]
    return "\n".join(f"{c[0]:<{first}}" + "".join(f"{v:>{width}}" for v in c[1:]) for c in cells)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
