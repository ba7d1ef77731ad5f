"""Print rows of dicts as a table on standard output."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_table(rows: list[dict], title: str | None = None) -> None:
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    Console(width=200).print(table)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
