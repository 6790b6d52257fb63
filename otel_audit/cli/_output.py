"""One rule for every table the CLI prints.

On a terminal: a Rich table whose name columns are never wrapped or truncated (the
text columns wrap instead). When stdout is not a terminal: CSV, so ``| csvlook`` or a
spreadsheet works without flags. ``--format json`` (where a command offers it): a list
of objects. Commands choose the format with :func:`output_format` and print with
:func:`print_rows`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

from rich import box
from rich.markup import escape
from rich.table import Table

from ._app import CliError, console, is_terminal

__all__ = ["Column", "output_format", "plain", "print_rows"]


@dataclass(frozen=True, slots=True)
class Column:
    """A column: ``name`` (the CSV/JSON key), ``header`` shown in the table, how it wraps.

    ``whole=True`` for values a user types or copies (names, IDs, timestamps): never
    wrapped nor cut. Other columns wrap at word boundaries, else fold.
    """

    name: str
    header: str | None = None
    whole: bool = False
    justify: str = "left"


def output_format(fmt: str | None, allowed: Sequence[str] = ("table", "csv", "json")) -> str:
    """``fmt`` if given and allowed, else ``table`` on a terminal and ``csv`` when piped."""
    chosen = (fmt or ("table" if is_terminal() else "csv")).lower()
    if chosen not in allowed:
        raise CliError(f"--format must be one of {', '.join(allowed)}; got {chosen!r}")
    return chosen


def plain(value: Any) -> Any:
    """A cell as JSON carries it: ISO 8601 for times, ``None`` stays ``None``."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _csv_value(value: Any) -> Any:
    """A cell as CSV carries it: lists and objects as JSON text, not Python's repr."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return plain(value)


def print_rows(
    columns: Sequence[Column | str],
    rows: Sequence[Sequence[Any]],
    *,
    fmt: str,
    title: str | None = None,
    caption: str | None = None,
    stream: TextIO | None = None,
    row_style: Callable[[Sequence[Any]], str | None] | None = None,
) -> None:
    """Print ``rows`` under ``columns`` as a Rich table, CSV or JSON (see module doc).

    Cells are plain values (never markup); ``row_style`` may colour a table row.
    ``title`` and ``caption`` show on the table only, so CSV and JSON stay parseable.
    """
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    out = stream or sys.stdout
    if fmt == "json":
        records = [{c.name: plain(v) for c, v in zip(cols, row, strict=True)} for row in rows]
        json.dump(records, out, indent=2, default=str)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([c.name for c in cols])
        writer.writerows([_csv_value(v) for v in row] for row in rows)
        return
    cols = [_right_if_numeric(c, [row[i] for row in rows]) for i, c in enumerate(cols)]
    cells = [[_cell(v) for v in row] for row in rows]
    styles = [row_style(row) if row_style else None for row in rows]
    out_console = console()
    if _needed_width(cols, cells) > out_console.width:
        _print_expanded(cols, cells, styles, title=title, caption=caption)
        return
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    for c in cols:
        if c.whole:
            table.add_column(c.header or c.name, no_wrap=True, overflow="fold",
                             justify=c.justify)  # type: ignore[arg-type]
        else:
            table.add_column(c.header or c.name, overflow="fold",
                             justify=c.justify)  # type: ignore[arg-type]
    for row_cells, style in zip(cells, styles, strict=True):
        table.add_row(*(escape(v) for v in row_cells), style=style)
    out_console.print(table)


def _cell(value: Any) -> str:
    """A value as a person reads it in a table (CSV and JSON keep ``true``/``false``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime) and value.utcoffset() in (None, dt.timedelta(0)):
        return value.strftime("%Y-%m-%d %H:%M:%S")  # UTC to the second: CSV/JSON keep all
    return str(_csv_value(value))


def _right_if_numeric(column: Column, values: Sequence[Any]) -> Column:
    present = [v for v in values if v is not None]
    numeric = present and all(isinstance(v, int | float | Decimal) and not isinstance(v, bool)
                              for v in present)
    if numeric and column.justify == "left":
        return Column(column.name, column.header, whole=True, justify="right")
    return column


#: Narrowest a wrapping column may get before the table is printed record by record.
_MIN_WRAPPED = 12


def _needed_width(cols: Sequence[Column], cells: Sequence[Sequence[str]]) -> int:
    """Width of the table with every whole column unwrapped (box edges and padding too)."""
    width = 0
    for i, c in enumerate(cols):
        longest = max([len(c.header or c.name),
                       *(len(line) for row in cells for line in row[i].splitlines())])
        width += longest if c.whole else min(longest, _MIN_WRAPPED)
    return width + 3 * max(len(cols) - 1, 0) + 2


def _print_expanded(cols: Sequence[Column], cells: Sequence[Sequence[str]],
                    styles: Sequence[str | None], *, title: str | None,
                    caption: str | None) -> None:
    """One block per row (``header  value`` lines): for terminals too narrow for the table,
    so that no name or ID is ever cut (as ``psql``'s expanded display)."""
    out = console()
    if title:
        out.print(f"[bold]{escape(title)}[/]")
    for n, (row_cells, style) in enumerate(zip(cells, styles, strict=True), start=1):
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column(overflow="fold")
        for c, value in zip(cols, row_cells, strict=True):
            grid.add_row(escape(c.header or c.name), escape(value), style=style)
        out.rule(f"{n}", align="left", style="dim")
        out.print(grid)
    if caption:
        out.print(f"[dim]{escape(caption)}[/]")
