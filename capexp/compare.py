"""`capexp compare`: the seed study's experimentation and ranking tables, rebuilt from MLflow.

Runs are read from the tracking store only (no spec files). A comparison is one pandas
DataFrame of `Cell`s: rows are dotted spec keys, then Notes, then metric rows; columns are
runs. A value that differs from the previous column is bold, with an arrow when it grew or
shrank (lists compared elementwise). Markdown reproduces SEED.md's layout; CSV carries the
Markdown cells as they are; HTML the same cells with `<strong>` for bold; the terminal view
is a rich table split into column groups that fit the console.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capexp.errors import CapexpError, warn
from capexp.tracking import DEFAULT_EXPERIMENT, TAG_PRUNED, TAG_STUDY, use_store

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "FORMATS",
    "SEED_ROWS",
    "METRIC_ROWS",
    "Cell",
    "RunRecord",
    "Comparison",
    "Ranking",
    "find_runs",
    "load_runs",
    "load_study",
    "build_comparison",
    "build_ranking",
    "render",
    "terminal_tables",
    "compare",
]

FORMATS = ("term", "md", "csv", "html")

# The hyperparameter rows of SEED.md's table, always shown (when logged), in this order.
SEED_ROWS = (
    "clip_config.image_size",
    "gpt2_config.visual_tokens_length",
    "gpt2_config.text_tokens_max_length",
    "gpt2_config.n_layers_to_freeze",
    "training_config.subset_ratio",
    "training_config.batch_size",
    "training_config.learning_rate",
)
# Metric rows after Notes, shown where at least one run has them. Per-epoch metrics are
# read at the run's best epoch (the kept checkpoint); the others are single values.
METRIC_ROWS = (
    "objective",
    "best_val_loss",
    "best_epoch",
    "bertscore_precision",
    "bertscore_recall",
    "bertscore_f1",
    "bleu4",
    "meteor",
    "rouge_l",
    "cider",
    "test_bertscore_precision",
    "test_bertscore_recall",
    "test_bertscore_f1",
    "test_bleu4",
    "test_meteor",
    "test_rouge_l",
    "test_cider",
    "human_accuracy",
)
_EPOCH_METRICS = frozenset(
    {"train_loss", "val_loss", "bertscore_precision", "bertscore_recall", "bertscore_f1"}
    | {f"bleu{n}" for n in range(1, 5)}
    | {"meteor", "rouge_l", "cider"}
)
# Params that are not hyperparameters: the run's name and description, where it copies outputs,
# and what the data decided (the cut vocabulary's size).
_NOT_HYPERPARAMS = frozenset(
    {"id", "notes", "training_config.trained_model_path", "training_config.monitoring_plots_path", "vocabulary_size"}
)
_NOTES = "Notes"
_KEY_HEADER = "Model_ID"
_TAG_NOTE = "mlflow.note.content"
_TAG_PARENT = "mlflow.parentRunId"
# Params of a study's parent run (as `capexp study` logs them): the metric the trials optimise
# and "minimize"/"maximize". A trial's objective is its best epoch value of that metric.
_PARAM_OBJECTIVE = "objective.metric"
_PARAM_DIRECTION = "objective.direction"
_MISSING = "—"


# ---------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    """One table cell: the value as shown, the change arrow, and whether it changed (bold)."""

    text: str
    arrow: str = ""  # "↑", "↓" or ""
    changed: bool = False

    def _marked(self, text: str, bold: tuple[str, str]) -> str:
        if self.changed:
            text = f"{bold[0]}{text}{bold[1]}"
        return f"{self.arrow} {text}" if self.arrow else text

    def marked(self) -> str:
        """The Markdown form, unescaped: arrow and `**bold**` (CSV carries cells like this)."""
        return self._marked(self.text, ("**", "**"))

    def markdown(self) -> str:
        return self._marked(self.text.replace("|", "\\|").replace("\n", "<br>"), ("**", "**"))

    def html(self) -> str:
        return self._marked(html.escape(self.text).replace("\n", "<br>"), ("<strong>", "</strong>"))


def _fmt_float(v: float) -> str:
    """Floats as SEED writes them: 0.005, 0.4, 1e-4 (scientific below 1e-3 or from 1e6)."""
    if math.isnan(v) or math.isinf(v) or v == 0 or 1e-3 <= abs(v) < 1e6:
        return repr(v)
    mantissa, exponent = f"{v:.12e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _fmt_value(v: Any) -> str:
    """A param value as shown in a cell: JSON-like, lists as `[50, 50]`, floats as SEED's."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _fmt_float(v)
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def _fmt_metric(name: str, v: float) -> str:
    if name.endswith("accuracy"):
        return f"{v:.0f}%"
    if name.endswith(("_epoch", "_total")):
        return str(int(v))
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4f}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _arrow(prev: Any, cur: Any) -> str:
    """↑ when `cur` is larger than `prev`, ↓ when smaller; lists elementwise; else ""."""
    if _is_number(prev) and _is_number(cur):
        pairs = [(prev, cur)]
    elif (
        isinstance(prev, list)
        and isinstance(cur, list)
        and len(prev) == len(cur)
        and all(_is_number(x) for x in prev + cur)
    ):
        pairs = list(zip(prev, cur))
    else:
        return ""
    if all(c >= p for p, c in pairs) and any(c > p for p, c in pairs):
        return "↑"
    if all(c <= p for p, c in pairs) and any(c < p for p, c in pairs):
        return "↓"
    return ""


# ---------------------------------------------------------------------------- runs
@dataclass
class RunRecord:
    """What the tables need from one MLflow run."""

    run_id: str
    name: str
    status: str  # FINISHED, RUNNING, FAILED, KILLED
    start_time: int
    notes: str
    params: dict[str, Any]  # hyperparameters by dotted key, parsed from their JSON form
    metrics: dict[str, float]  # METRIC_ROWS-style values (per-epoch ones at the best epoch)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def pruned(self) -> bool:
        return self.tags.get(TAG_PRUNED) == "true"


def _parse_param(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _record(client: MlflowClient, run: Run, objective: tuple[str, str] | None = None) -> RunRecord:
    """Read one run: params parsed, per-epoch metrics taken at the best epoch (`best_epoch`
    when logged, else the epoch of lowest val_loss; the last one when neither is known).
    With a study's `objective` (metric, direction), also `objective`: the metric's best epoch
    value, as the study scored the trial."""
    run_id = run.info.run_id
    metrics = dict(run.data.metrics)
    histories = {k: client.get_metric_history(run_id, k) for k in metrics if k in _EPOCH_METRICS}
    if objective is not None and objective[0] in metrics:
        values = [m.value for m in histories.get(objective[0]) or client.get_metric_history(run_id, objective[0])]
        metrics["objective"] = (min if _mode(*objective) == "min" else max)(values)
    epoch = int(metrics["best_epoch"]) if "best_epoch" in metrics else None
    if histories.get("val_loss"):
        lowest = min(histories["val_loss"], key=lambda m: (m.value, m.step))
        epoch = lowest.step if epoch is None else epoch
        metrics.setdefault("best_val_loss", lowest.value)
    if epoch is not None:
        metrics["best_epoch"] = float(epoch)
        for key, history in histories.items():
            at_epoch = [m.value for m in history if m.step == epoch]
            metrics[key] = at_epoch[-1] if at_epoch else metrics[key]
    return RunRecord(
        run_id=run_id,
        name=run.info.run_name or run_id,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        notes=run.data.tags.get(_TAG_NOTE, ""),
        params={k: _parse_param(v) for k, v in run.data.params.items() if k not in _NOT_HYPERPARAMS},
        metrics=metrics,
        tags=dict(run.data.tags),
    )


def _search(client: MlflowClient, experiment_ids: list[str]) -> list[Run]:
    """Every active run of the experiments, oldest first."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, max_results=1000, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    """The named experiment's id, or every active experiment's when `experiment` is None."""
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments()]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise CapexpError(
            f"There is no MLflow experiment named {experiment!r} in the store {_uri()}. "
            f"Experiments there: {names}. Pass one of them with --experiment, or point "
            f"--tracking-uri / MLFLOW_TRACKING_URI at the store that holds your runs."
        )
    return [exp.experiment_id]


def _uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _is_run_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def find_runs(names: Iterable[str], experiment: str | None = None) -> tuple[dict[str, Run], list[str]]:
    """Match run names or run ids to runs: ({given name: run}, [names that match nothing]).

    Names are looked up in `experiment`, or in every experiment when it is None. A name
    that several runs share gives the latest of them, with a warning.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    ids = _experiment_ids(client, experiment)
    by_name: dict[str, list[Run]] | None = None
    found: dict[str, Run] = {}
    missing: list[str] = []
    for name in dict.fromkeys(names):
        if _is_run_id(name):
            try:
                run = client.get_run(name)
            except MlflowException:
                run = None
            if run is not None and (experiment is None or run.info.experiment_id in ids):
                found[name] = run
                continue
        if by_name is None:
            by_name = {}
            for run in _search(client, ids):
                by_name.setdefault(run.info.run_name or "", []).append(run)
        candidates = by_name.get(name, [])
        if not candidates:
            missing.append(name)
            continue
        found[name] = candidates[-1]
        if len(candidates) > 1:
            warn(
                f"{len(candidates)} runs are named {name!r}; using the latest "
                f"({candidates[-1].info.run_id}). Pass a run id to pick another."
            )
    return found, missing


def load_runs(runs: Sequence[str] = (), *, experiment: str | None = None) -> list[RunRecord]:
    """The runs to compare: `runs` by name or id in the order given, else the ordinary runs
    (not studies' parents or trials) of `experiment` (default: capexp) in start order."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if runs:
        found, missing = find_runs(runs, experiment)
        if missing:
            where = f"experiment {experiment!r}" if experiment else "any experiment"
            raise CapexpError(
                f"No run named or with id {', '.join(repr(m) for m in missing)} in {where} of the "
                f"store {_uri()}. Check the names with `capexp compare --experiment NAME`, or "
                f"point --tracking-uri / MLFLOW_TRACKING_URI at the right store."
            )
        return [_record(client, found[name]) for name in dict.fromkeys(runs)]
    name = experiment or DEFAULT_EXPERIMENT
    ordinary = [
        r for r in _search(client, _experiment_ids(client, name))
        if _TAG_PARENT not in r.data.tags and TAG_STUDY not in r.data.tags
    ]
    if not ordinary:
        raise CapexpError(
            f"Experiment {name!r} in the store {_uri()} has no runs to compare. Run `capexp run "
            f"SPEC` first, or pick another experiment with --experiment or a study with --study."
        )
    return [_record(client, r) for r in ordinary]


def load_study(study: str, experiment: str | None = None) -> tuple[list[RunRecord], str | None]:
    """A study's trial runs (children of its parent run, tagged with its name) in start order,
    each with its `objective` when the parent names the metric; and the study's direction."""
    from mlflow import MlflowClient

    client = MlflowClient()
    every = [r for r in _search(client, _experiment_ids(client, experiment)) if r.data.tags.get(TAG_STUDY) == study]
    trials = [r for r in every if _TAG_PARENT in r.data.tags]
    if not trials:
        others = _search(client, _experiment_ids(client, experiment))
        studies = sorted({r.data.tags[TAG_STUDY] for r in others if TAG_STUDY in r.data.tags})
        raise CapexpError(
            f"No trial runs of study {study!r} in the store {_uri()} (runs tagged "
            f"{TAG_STUDY}={study!r} with a parent run). Studies there: "
            f"{', '.join(studies) or 'none'}. Check the name given to `capexp study --name`."
        )
    parent = next((r.data.params for r in every if _TAG_PARENT not in r.data.tags), {})
    metric, direction = parent.get(_PARAM_OBJECTIVE), parent.get(_PARAM_DIRECTION)
    objective = (metric, direction or "") if metric else None
    return [_record(client, r, objective) for r in trials], direction if metric else None


# ---------------------------------------------------------------------------- tables
def _mode(metric: str, direction: str | None = None) -> str:
    if direction in ("minimize", "maximize"):
        return "min" if direction == "minimize" else "max"
    return "min" if "loss" in metric else "max"


def _best_ids(records: Sequence[RunRecord], metric: str, mode: str) -> set[str]:
    """The runs with the best value of `metric`; a pruned run (stopped early) is never best."""
    scored = [
        (r.metrics[metric], r.run_id) for r in records
        if not r.pruned and not math.isnan(r.metrics.get(metric, math.nan))
    ]
    if not scored:
        return set()
    best = (min if mode == "min" else max)(v for v, _ in scored)
    return {run_id for v, run_id in scored if v == best}


def _labels(records: Sequence[RunRecord], best: set[str]) -> list[str]:
    """Column headers: run name (with a short id where names repeat) and (best)/(pruned)/status."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.name] = counts.get(r.name, 0) + 1
    labels = []
    for r in records:
        label = r.name if counts[r.name] == 1 else f"{r.name} ({r.run_id[:8]})"
        if r.run_id in best:
            label += " (best)"
        if r.pruned:
            label += " (pruned)"
        elif r.status not in ("FINISHED", ""):
            label += f" ({r.status.lower()})"
        labels.append(label)
    return labels


def _hyperparam_rows(records: Sequence[RunRecord]) -> list[str]:
    keys = {k for r in records for k in r.params}
    differs = {
        k for k in keys
        if any(k not in r.params for r in records)
        or any(not _same(records[0].params[k], r.params[k]) for r in records[1:])
    }
    return [k for k in SEED_ROWS if k in keys] + sorted(differs - set(SEED_ROWS))


def _param_cells(records: Sequence[RunRecord], key: str) -> list[Cell]:
    cells: list[Cell] = []
    for i, r in enumerate(records):
        if key not in r.params:
            cells.append(Cell(_MISSING))
            continue
        value = r.params[key]
        prev = records[i - 1].params if i else None
        changed = prev is not None and (key not in prev or not _same(prev[key], value))
        arrow = _arrow(prev[key], value) if changed and key in prev else ""  # type: ignore[index]
        cells.append(Cell(_fmt_value(value), arrow, changed))
    return cells


@dataclass
class Comparison:
    """The experimentation table: `frame` holds `Cell`s (index = row names, columns = runs)."""

    frame: pd.DataFrame
    records: list[RunRecord]
    metric: str
    best: set[str]  # run ids starred as best by `metric`

    def grid(self) -> tuple[list[str], list[list[Cell]]]:
        header = [_KEY_HEADER, *self.frame.columns]
        rows = [[Cell(str(key)), *row] for key, row in zip(self.frame.index, self.frame.itertuples(index=False))]
        return header, rows


@dataclass
class Ranking:
    """The human-score ranking table: Ranking, Model_ID, Total Score, Accuracy (as `Cell`s)."""

    frame: pd.DataFrame

    def grid(self) -> tuple[list[str], list[list[Cell]]]:
        return list(self.frame.columns), [list(row) for row in self.frame.itertuples(index=False)]


def build_comparison(
    records: Sequence[RunRecord],
    *,
    metric: str | None = None,
    only_changed: bool = False,
    sort_by_metric: bool = False,
    direction: str | None = None,
) -> Comparison:
    """One column per run: SEED's hyperparameter rows plus every key that differs, Notes,
    then metric rows; the best run by `metric` (default: `objective` for study trials when
    logged, else `best_val_loss`; `direction` "minimize"/"maximize", default by the name) is
    starred. `sort_by_metric` orders runs best first, pruned and unfinished ones last."""
    import pandas as pd

    if not records:
        raise CapexpError("No runs to compare. Name runs, or pass --experiment or --study.")
    available = sorted({k for r in records for k in r.metrics})
    if metric == "val_loss":
        metric = "best_val_loss"
    if metric is None:
        metric = "objective" if sort_by_metric and "objective" in available else "best_val_loss"
    elif metric not in available:
        raise CapexpError(
            f"--metric {metric!r} is not logged by any of the compared runs. Metrics they have: "
            f"{', '.join(available) or 'none'}. Pass one of these."
        )
    mode = _mode(metric, direction)
    records = list(records)
    if sort_by_metric:
        sign = 1 if mode == "min" else -1
        records.sort(
            key=lambda r: (r.pruned or r.status != "FINISHED", metric not in r.metrics,
                           sign * r.metrics.get(metric, 0.0), r.start_time)
        )
    best = _best_ids(records, metric, mode)

    rows: dict[str, list[Cell]] = {}
    for key in _hyperparam_rows(records):
        cells = _param_cells(records, key)
        if not (only_changed and not any(c.changed for c in cells)):
            rows[key] = cells
    if any(r.notes for r in records):
        rows[_NOTES] = [Cell(r.notes) for r in records]
    for key in dict.fromkeys([*METRIC_ROWS, metric]):
        if any(key in r.metrics for r in records):
            rows[key] = [
                Cell(_fmt_metric(key, r.metrics[key])) if key in r.metrics else Cell(_MISSING) for r in records
            ]
    frame = pd.DataFrame(rows, index=_labels(records, best), dtype=object).T
    frame.index.name = _KEY_HEADER
    return Comparison(frame=frame, records=records, metric=metric, best=best)


def build_ranking(records: Sequence[RunRecord]) -> Ranking:
    """Runs with human scores, by total score; ties share a rank (1, 2, 3, 3, 5) and keep
    the given order."""
    import pandas as pd

    scored = [r for r in records if "human_total" in r.metrics]
    if not scored:
        raise CapexpError(
            "None of the compared runs has human scores (metric human_total). Import them with "
            "`capexp score SCORES.csv` (columns image_id, model_name, caption, score) first."
        )
    scored.sort(key=lambda r: -r.metrics["human_total"])  # stable: ties keep the given order
    rows = []
    for i, r in enumerate(scored):
        total = r.metrics["human_total"]
        rank = i + 1 if i == 0 or total != scored[i - 1].metrics["human_total"] else rows[-1][0]
        accuracy = r.metrics.get("human_accuracy", math.nan)
        rows.append([rank, r.name, _fmt_metric("human_total", total), _fmt_metric("human_accuracy", accuracy)])
    cells = [[Cell(str(value)) for value in row] for row in rows]
    frame = pd.DataFrame(cells, columns=["Ranking", "Model_ID", "Total Score", "Accuracy"])
    return Ranking(frame=frame)


# ---------------------------------------------------------------------------- rendering
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
        max([_width(heads[j])] + [_width(_text(r[j + 1]).plain) for r in rows if r[0].text != _NOTES])
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
    multiline = any("\n" in k for k in keys) or any(r[0].text == _NOTES for r in rows)
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


def render(table: Comparison | Ranking, fmt: str, *, width: int = 100) -> str:
    """`table` as Markdown, CSV, HTML or plain terminal text `width` columns wide."""
    header, rows = table.grid()
    if fmt == "md":
        return _markdown(header, rows)
    if fmt == "csv":
        return _csv(header, rows)
    if fmt == "html":
        return _html(header, rows)
    if fmt == "term":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
        for t in terminal_tables(header, rows, width):
            console.print(t)
        return console.export_text()
    raise CapexpError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}. Pick one of these.")


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
    width = console.width if output is None else 100
    text = render(table, fmt, width=width)
    if output is not None:
        path = Path(output)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as e:
            raise CapexpError(f"Cannot write --output {path}: {e.strerror}. Pick a writable path.") from None
        console.print(f"Wrote {path} ({fmt}, {len(records)} runs).", highlight=False)
    elif fmt == "term":
        header, rows = table.grid()
        for t in terminal_tables(header, rows, console.width):
            console.print(t)
    else:
        console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
    return text
