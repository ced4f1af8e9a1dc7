"""`capexp compare`: read the runs, build the table, render it, write or print it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from capexp.compare.records import load_runs, load_study
from capexp.compare.render import FORMATS, render, terminal_tables, terminal_text
from capexp.compare.table import Comparison, Ranking, build_comparison, build_ranking
from capexp.errors import CapexpError
from capexp.tracking import use_store

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["compare"]


def compare(
    runs: Sequence[str] = (),
    *,
    experiment: str | None = None,
    study: str | None = None,
    fmt: str | None = None,
    output: str | Path | None = None,
    only_changed: bool = False,
    metric: str | None = None,
    ranking: bool = False,
    tracking_uri: str | None = None,
    console: Console | None = None,
) -> str:
    """What `capexp compare` does: read the runs, build the comparison (or, with `ranking`,
    the human-score ranking) from the store at `tracking_uri` (default: $MLFLOW_TRACKING_URI,
    else ./mlruns), and write it to `output` or print it to `console`.

    `fmt` defaults to the output file's suffix (.md, .csv, .html), else "term". Returns the
    rendered text (terminal text is plain, at the console's width).
    """
    from rich.console import Console

    if runs and study:
        raise CapexpError("Pass either run names/ids or --study, not both.")
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output else ""
        fmt = {"md": "md", "markdown": "md", "csv": "csv", "html": "html", "htm": "html"}.get(suffix, "term")
    if fmt not in FORMATS:
        raise CapexpError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}. Pick one of these.")
    use_store(tracking_uri)
    direction = None
    if study is not None:
        records, direction = load_study(study, experiment)
    else:
        records = load_runs(runs, experiment=experiment)
    if ranking:
        table: Comparison | Ranking = build_ranking(records)
    else:
        direction = direction if metric in (None, "objective") else None
        table = build_comparison(
            records, metric=metric, only_changed=only_changed, sort_by_metric=study is not None, direction=direction
        )
    console = console or Console()
    if output is None and fmt == "term":  # lay the tables out once: printed with style, returned as text
        tables = terminal_tables(*table.grid(), console.width)
        for t in tables:
            console.print(t)
        return terminal_text(tables, console.width)
    text = render(table, fmt, width=console.width if output is None else 100)
    if output is None:
        console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        return text
    path = Path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise CapexpError(f"Cannot write --output {path}: {e.strerror}. Pick a writable path.") from None
    console.print(f"Wrote {path} ({fmt}, {len(records)} runs).", highlight=False)
    return text
