"""Print rows of dicts as a table on standard output."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_table(rows: list[dict], title: str | None = None) -> None:
    """The columns are every key of any row, in order of first appearance; each cell goes under
    its own key's header, and a row without that key has a blank cell there."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title)
    for column in columns:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*(_fmt(row.get(c, "")) for c in columns))
    Console(width=200).print(table)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
