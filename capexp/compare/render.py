"""The renderers: one table (`Comparison` or `Ranking`) as Markdown, CSV, HTML or terminal text.

Markdown reproduces the seed study's table layout; CSV carries the Markdown cells as they
are; HTML the same cells with `<strong>` for bold; the terminal view is a rich table split
into column groups that fit the console.
"""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capexp.compare.table import NOTES, Cell, Comparison, Ranking, Trials
from capexp.errors import CapexpError

if TYPE_CHECKING:
    from rich.table import Table

    from capexp.compare.records import StudyParent

__all__ = ["FORMATS", "render", "study_markdown", "importance_grid", "terminal_tables", "terminal_text"]

FORMATS = ("term", "md", "csv", "html")


def _markdown(header: list[str], rows: list[list[Cell]]) -> str:
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.markdown() for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv(header: list[str], rows: list[list[Cell]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([c.marked() for c in row] for row in rows)
    return out.getvalue()


def _html(header: list[str], rows: list[list[Cell]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{c.html()}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="capexp">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n'


def _text(cell: Cell) -> Any:
    from rich.text import Text

    text = Text()
    if cell.arrow:
        text.append(cell.arrow + " ")
    text.append(cell.text, style="bold" if cell.changed else "")
    return text


def _term_header(label: str) -> str:
    """Put a header's markers, e.g. "(best)", on their own line so columns stay narrow."""
    name, sep, marks = label.partition(" (")
    return f"{name}\n({marks}" if sep else name


def _term_key(key: str, limit: int = 24) -> str:
    """Break a long dotted key after its section so the key column stays narrow."""
    section, sep, rest = key.partition(".")
    return f"{section}.\n{rest}" if sep and len(key) > limit else key


def _width(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(line) for line in text.split("\n")), default=0)


def terminal_tables(header: list[str], rows: list[list[Cell]], width: int) -> list[Table]:
    """Rich tables that fit `width` columns: the first column, then as many of the others
    as fit, repeated as needed; long text (Notes) wraps inside its column."""
    from rich import box
    from rich.table import Table

    keys = [_term_key(row[0].text) for row in rows]
    key_width = max(_width(k) for k in [header[0], *keys])
    heads = [_term_header(h) for h in header[1:]]
    widths = [
        max([_width(heads[j])] + [_width(_text(r[j + 1]).plain) for r in rows if r[0].text != NOTES])
        for j in range(len(heads))
    ]
    groups: list[list[int]] = [[]]
    used = key_width + 3
    for j, w in enumerate(widths):
        if groups[-1] and used + w + 3 > width:
            groups.append([])
            used = key_width + 3
        groups[-1].append(j)
        used += w + 3
    multiline = any("\n" in k for k in keys) or any(r[0].text == NOTES for r in rows)
    tables = []
    for group in groups:
        table = Table(box=box.SIMPLE_HEAD, show_lines=multiline, pad_edge=False)
        table.add_column(header[0], style="cyan", no_wrap=True)
        for j in group:
            table.add_column(heads[j], min_width=min(widths[j], width // (len(group) + 1)), overflow="fold")
        for key, row in zip(keys, rows):
            table.add_row(key, *[_text(row[j + 1]) for j in group])
        tables.append(table)
    return tables


def terminal_text(tables: list[Table], width: int) -> str:
    """Terminal tables as plain text `width` columns wide."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    for t in tables:
        console.print(t)
    return console.export_text()


def render(table: Comparison | Trials | Ranking, fmt: str, *, width: int = 100) -> str:
    """`table` as Markdown, CSV, HTML or plain terminal text `width` columns wide."""
    header, rows = table.grid()
    if fmt == "md":
        return _markdown(header, rows)
    if fmt == "csv":
        return _csv(header, rows)
    if fmt == "html":
        return _html(header, rows)
    if fmt == "term":
        return terminal_text(terminal_tables(header, rows, width), width)
    raise CapexpError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}. Pick one of these.")


def importance_grid(parent: StudyParent) -> tuple[list[str], list[list[Cell]]]:
    """The knobs by fANOVA importance for the (first) objective, largest first: short name (as in the
    trials table), key, importance; a study of several objectives adds a column for each further one."""
    from capexp.study.progress import short_key

    others = parent.other_importances
    rows = [[Cell(short_key(k)), Cell(k), Cell(f"{v:.3f}"),
             *(Cell(f"{o[k]:.3f}" if k in o else "—") for o in others.values())] for k, v in parent.importances.items()]
    first = parent.metric if others and parent.metric else "importance"
    return ["knob", "key", first, *others], rows


def study_markdown(parent: StudyParent, plot_links: dict[str, str]) -> str:
    """A study's importances and its Optuna plots (`plot_links`: artifact path -> link) as Markdown,
    to follow its trials table."""
    parts = [parent.cost_sentence() + "\n"] if parent.cost else []
    if parent.importances:
        which = (f"each objective ({', '.join([parent.metric, *parent.other_importances])})"
                 if parent.other_importances and parent.metric else f"the objective ({parent.metric or 'objective'})")
        parts.append(
            f"### Which knobs mattered\n\nfANOVA importance of each knob for {which} over the complete trials "
            f"(pruned trials do not count); each column sums to 1.\n\n" + _markdown(*importance_grid(parent))
        )
    if plot_links:
        images = [f"![{Path(p).stem.replace('_', ' ')}]({link})" for p, link in plot_links.items()]
        parts.append("### Optuna plots\n\n" + "\n".join(images) + "\n")
    return "".join("\n" + part for part in parts)
