"""`capexp compare`: read the runs, build the table, render it, write or print it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from capexp.compare.finalist_table import Finalists, build_finalists, split_finalists
from capexp.compare.pareto_table import ParetoFront, front_markdown, front_tables, load_front
from capexp.compare.records import StudyParent, load_runs, load_study
from capexp.compare.significance_table import compare_significance
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
    significance: bool = False,
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
    With `significance`, it prints `compare_significance`'s table instead.
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
    if significance:
        if output is not None or fmt != "term" or ranking:
            raise CapexpError("--significance prints its own table to the terminal: drop --output, --format and "
                              "--ranking, or run them without --significance.")
        return compare_significance(runs, experiment=experiment, study=study, console=console or Console())
    found = _table(runs, experiment, study, metric, ranking, only_changed)
    console = console or Console()
    if output is None and fmt == "term":  # lay the tables out once: printed with style, returned as text
        return _print_terminal(console, found)
    text = render(found.table, fmt, width=console.width if output is None else 100)
    if fmt == "md":
        text += _study_sections(found, Path(output) if output else None)
    if output is None:
        console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        return text
    path = Path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise CapexpError(f"Cannot write --output {path}: {e.strerror}. Pick a writable path.") from None
    console.print(f"Wrote {path} ({fmt}, {found.count} runs).", highlight=False)
    return text


class _Found(NamedTuple):
    """The main table and how many runs it read; for a study, also its parent run, its finalists
    and its Pareto front (None where there are none)."""

    table: Comparison | Trials | Ranking
    count: int
    parent: StudyParent | None = None
    finalists: Finalists | None = None
    front: ParetoFront | None = None


def _table(runs: Sequence[str], experiment: str | None, study: str | None, metric: str | None, ranking: bool,
           only_changed: bool) -> _Found:
    """Read the runs (or the study's) and build what `compare` shows."""
    if study is None:
        records = load_runs(runs, experiment=experiment)
        table = build_ranking(records) if ranking else build_comparison(records, metric=metric, only_changed=only_changed)
        return _Found(table, len(records))
    records, direction, parent = load_study(study, experiment)
    searched, finals = split_finalists(records)
    if ranking:
        return _Found(build_ranking(searched), len(records), parent)
    knobs, objective = (parent.knobs, parent.metric) if parent is not None else ([], None)
    also = [m for m, _ in parent.objectives[1:]] if parent is not None else []
    trials = build_trials(searched, knobs, objective=objective, metric=metric,
                          direction=direction if metric in (None, "objective") else None, also=also)
    return _Found(trials, len(records), parent, build_finalists(searched, finals, knobs, parent),
                  load_front(study, searched, parent))


def _study_sections(found: _Found, output: Path | None) -> str:
    """What follows a study's trials in Markdown: its Pareto front, finalists, importances and plots."""
    text = front_markdown(found.front) if found.front is not None else ""
    if found.finalists is not None:
        text += f"\n### Finalists at full budget\n\n{render(found.finalists, 'md')}\n{found.finalists.sentence}\n"
    if found.parent is not None:
        text += study_markdown(found.parent, _plot_links(found.parent, output))
    return text


def _print_terminal(console: Console, found: _Found) -> str:
    """Print the tables at the console's width (a study's Pareto front, finalists and importances
    follow its trials); return them as text."""
    from rich.text import Text

    parent, finalists = found.parent, found.finalists
    blocks: list = terminal_tables(*found.table.grid(), console.width)
    if found.front is not None:
        blocks += front_tables(found.front, console.width)
    if finalists is not None:
        blocks += [Text("Finalists at full budget", style="bold"), *terminal_tables(*finalists.grid(), console.width),
                   Text(finalists.sentence + "\n")]
    if parent is not None and parent.cost:
        blocks.append(Text(parent.cost_sentence() + "\n"))
    if parent is not None and parent.importances:
        blocks += terminal_tables(*importance_grid(parent), console.width)
    for block in blocks:
        console.print(block)
    return terminal_text(blocks, console.width)


def _plot_links(parent: StudyParent, output: Path | None) -> dict[str, str]:
    """Each plot's link: a copy in `<output stem>-plots/` beside `output`, linked relatively;
    without `output`, the artifact's own URI."""
    import shutil
    import tempfile

    import mlflow

    from capexp.tracking.store import no_download_bars

    if output is None:
        return {p: f"{parent.artifact_uri}/{p}" for p in parent.plots}
    folder = output.parent / f"{output.stem}-plots"
    folder.mkdir(parents=True, exist_ok=True)
    links = {}
    with no_download_bars(), tempfile.TemporaryDirectory(prefix="capexp-plots-") as tmp:  # no bars around the report
        for p in parent.plots:
            local = mlflow.artifacts.download_artifacts(run_id=parent.run_id, artifact_path=p, dst_path=tmp)
            shutil.copyfile(local, folder / Path(p).name)
            links[p] = f"{folder.name}/{Path(p).name}"
    return links
