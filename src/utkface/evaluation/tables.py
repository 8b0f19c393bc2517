"""Text tables and number formats shared by the console summary and report.md (`report`,
`age_bins`): one look for every table, Markdown or aligned plain text."""

from __future__ import annotations


def points(value: float | None) -> str:
    """A change of a share, in percentage points with a sign."""
    return "-" if value is None else f"{100 * value:+.1f}"


def text_table(header: list[str], rows: list[list], markdown: bool = True) -> list[str]:
    """The lines of a table: Markdown, or plain text in columns (the first left-aligned)."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    if markdown:
        return (
            ["| " + " | ".join(row) + " |" for row in cells[:1]]
            + ["|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(row) + " |" for row in cells[1:]]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        )
        for row in cells
    ]


def num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"
