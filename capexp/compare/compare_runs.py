"""`capexp compare`: read the runs, build the table, render it, write or print it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from capexp.compare.pareto_table import front_markdown, front_tables, load_front
from capexp.compare.records import StudyParent, load_runs, load_study
from capexp.compare.render import FORMATS, importance_grid, render, study_markdown, terminal_tables, terminal_text
from capexp.compare.table import Comparison, Ranking, Trials, build_comparison, build_ranking, build_trials
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

    With `study`, Markdown and terminal text go on with the knobs' importances and the study's
    Optuna plots: Markdown written to a file links copies of the plots in `<name>-plots/` beside it.
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
    direction, parent = None, None
    if study is not None:
        records, direction, parent = load_study(study, experiment)
    else:
        records = load_runs(runs, experiment=experiment)
    table: Comparison | Trials | Ranking
    if ranking:
        table = build_ranking(records)
    elif study is not None:
        knobs, objective = (parent.knobs, parent.metric) if parent is not None else ([], None)
        table = build_trials(records, knobs, objective=objective, metric=metric,
                             direction=direction if metric in (None, "objective") else None)
    else:
        table = build_comparison(records, metric=metric, only_changed=only_changed)
    console = console or Console()
    front = load_front(study, records, parent) if study is not None and not ranking else None
    if output is None and fmt == "term":  # lay the tables out once: printed with style, returned as text
        tables = terminal_tables(*table.grid(), console.width)
        if parent is not None and parent.importances:
            tables += terminal_tables(*importance_grid(parent), console.width)
        tables += front_tables(front, console.width) if front is not None else []
        for t in tables:
            console.print(t)
        return terminal_text(tables, console.width)
    text = render(table, fmt, width=console.width if output is None else 100)
    if parent is not None and fmt == "md":
        text += (front_markdown(front) if front is not None else "") + study_markdown(
            parent, _plot_links(parent, Path(output) if output else None))
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


def _plot_links(parent: StudyParent, output: Path | None) -> dict[str, str]:
    """Each plot's link: a copy in `<output stem>-plots/` beside `output`, linked relatively;
    without `output`, the artifact's own URI."""
    import os
    import shutil
    import tempfile
    from unittest import mock

    import mlflow

    if output is None:
        return {p: f"{parent.artifact_uri}/{p}" for p in parent.plots}
    folder = output.parent / f"{output.stem}-plots"
    folder.mkdir(parents=True, exist_ok=True)
    links = {}
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # no download bars around the report
    with tempfile.TemporaryDirectory(prefix="capexp-plots-") as tmp, mock.patch.dict(os.environ, quiet):
        for p in parent.plots:
            local = mlflow.artifacts.download_artifacts(run_id=parent.run_id, artifact_path=p, dst_path=tmp)
            shutil.copyfile(local, folder / Path(p).name)
            links[p] = f"{folder.name}/{Path(p).name}"
    return links
