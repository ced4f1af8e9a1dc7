"""The table model: a comparison (one column per run), a study's trials (one row per trial) or a
ranking, as a DataFrame of `Cell`s.

In a comparison, rows are dotted spec keys, then Notes, then metric rows; columns are runs. A
value that differs from the previous column is bold, with an arrow when it grew or shrank (lists
compared elementwise). The renderers (capexp.compare.render) only lay these cells out.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capexp.compare.records import RunRecord
from capexp.errors import CapexpError
from capexp.spec.schema import metric_mode
from capexp.tracking import PARAM_TRIAL_NUMBER, TAG_OPTUNA_STATE, TAG_TRIAL
from capexp.tracking.names import TAG_CONTROL

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SEED_ROWS", "METRIC_ROWS", "NOTES", "KEY_HEADER", "Cell", "Comparison", "Trials", "Ranking",
    "build_comparison", "build_trials", "build_ranking",
]

# The hyperparameter rows of the seed study's table, always shown (when logged), in this order.
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
NOTES = "Notes"
KEY_HEADER = "Model_ID"
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
    """Floats as the seed study's table writes them: 0.005, 0.4, 1e-4 (scientific below 1e-3 or from 1e6)."""
    if math.isnan(v) or math.isinf(v) or v == 0 or 1e-3 <= abs(v) < 1e6:
        return repr(v)
    mantissa, exponent = f"{v:.12e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _fmt_value(v: Any) -> str:
    """A param value as shown in a cell: JSON-like, lists as `[50, 50]`, floats as the seed study's table does."""
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


def _best_first(records: Sequence[RunRecord], metric: str, mode: str) -> list[RunRecord]:
    """Finished runs by `metric`, best first, then pruned and unfinished ones (each in start order)."""
    sign = 1 if mode == "min" else -1
    return sorted(records, key=lambda r: (r.pruned or r.status != "FINISHED", metric not in r.metrics,
                                          sign * r.metrics.get(metric, 0.0), r.start_time))


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
        header = [KEY_HEADER, *self.frame.columns]
        rows = [[Cell(str(key)), *row] for key, row in zip(self.frame.index, self.frame.itertuples(index=False))]
        return header, rows


@dataclass
class _RowTable:
    """A table of one row per item: `frame`'s columns are the header, its rows hold `Cell`s."""

    frame: pd.DataFrame

    def grid(self) -> tuple[list[str], list[list[Cell]]]:
        return list(self.frame.columns), [list(row) for row in self.frame.itertuples(index=False)]


class Trials(_RowTable):
    """A study's trials, one row each, best first: trial number, the searched values, the objective
    (and the ranking metric when it is another, and further objectives), state, epochs run and minutes."""


class Ranking(_RowTable):
    """The human-score ranking table: Ranking, Model_ID, Total Score, Accuracy."""


def build_comparison(records: Sequence[RunRecord], *, metric: str | None = None, only_changed: bool = False) -> Comparison:
    """One column per run: the seed study's hyperparameter rows plus every key that differs, Notes,
    then metric rows; the best run by `metric` (default `best_val_loss`) is starred."""
    import pandas as pd

    if not records:
        raise CapexpError("No runs to compare. Name runs, or pass --experiment or --study.")
    available = sorted({k for r in records for k in r.metrics})
    if metric is not None and metric != "val_loss" and metric not in available:
        raise CapexpError(
            f"--metric {metric!r} is not logged by any of the compared runs. Metrics they have: "
            f"{', '.join(available) or 'none'}. Pass one of these."
        )
    metric = "best_val_loss" if metric in (None, "val_loss") else metric
    records = list(records)
    best = _best_ids(records, metric, metric_mode(metric))

    rows: dict[str, list[Cell]] = {}
    for key in _hyperparam_rows(records):
        cells = _param_cells(records, key)
        if not (only_changed and not any(c.changed for c in cells)):
            rows[key] = cells
    if any(r.notes for r in records):
        rows[NOTES] = [Cell(r.notes) for r in records]
    for key in dict.fromkeys([*METRIC_ROWS, metric]):
        if any(key in r.metrics for r in records):
            rows[key] = [
                Cell(_fmt_metric(key, r.metrics[key])) if key in r.metrics else Cell(_MISSING) for r in records
            ]
    frame = pd.DataFrame(rows, index=_labels(records, best), dtype=object).T
    frame.index.name = KEY_HEADER
    return Comparison(frame=frame, records=records, metric=metric, best=best)


def _state(r: RunRecord) -> str:
    """complete, pruned, failed, running or killed (runs of older studies have no Optuna state tag)."""
    if r.pruned:
        return "pruned"
    if r.status == "RUNNING":
        return "running"
    state = r.tags.get(TAG_OPTUNA_STATE) or {"FINISHED": "COMPLETE", "FAILED": "FAIL"}.get(r.status, r.status)
    return {"COMPLETE": "complete", "FAIL": "failed"}.get(state, state.lower())


def build_trials(
    records: Sequence[RunRecord],
    knobs: Sequence[str],
    *,
    objective: str | None = None,
    metric: str | None = None,
    direction: str | None = None,
    also: Sequence[str] = (),
) -> Trials:
    """One row per trial run, best first by `metric` (default: the study's objective, named
    `objective`), with the searched `knobs` (dotted keys, named as the study's progress lines
    name them) and the metrics `also` (a study's further objectives); the best trial's number
    and state are bold."""
    import pandas as pd

    from capexp.study.progress import short_key, short_value

    if not records:
        raise CapexpError("The study has no trial runs yet. Run `capexp study` first.")
    metric = "best_val_loss" if metric == "val_loss" else metric or "objective"
    if not any(metric in r.metrics for r in records) and any(r.status == "FINISHED" for r in records):
        available = sorted({k for r in records for k in r.metrics})
        raise CapexpError(f"--metric {metric!r} is not logged by the study's trials. They have: {', '.join(available)}.")
    mode = metric_mode(metric, direction)
    outside = [r for r in records if r.tags.get(TAG_CONTROL) == "true" and TAG_TRIAL not in r.tags]
    searched = [r for r in records if r not in outside]
    best = _best_ids(searched, metric, mode)  # the control outside the space is no trial: it goes on a row of its own
    records = [*_best_first(searched, metric, mode), *outside]
    knobs = sorted(knobs, key=lambda k: (SEED_ROWS.index(k) if k in SEED_ROWS else len(SEED_ROWS), k))
    columns = list(dict.fromkeys(["objective", *([metric] if metric != "objective" else []), *also]))
    rows = []
    for r in records:
        number = r.params.get(PARAM_TRIAL_NUMBER, r.tags.get(TAG_TRIAL, _MISSING if r in outside else "?"))
        state = "best" if r.run_id in best else _state(r)
        if r.tags.get(TAG_CONTROL) == "true" and state in ("best", "complete"):
            state = "best control" if state == "best" else "control"
        seconds = (r.end_time - r.start_time) / 1000 if r.end_time and r.start_time else None
        rows.append([
            Cell(str(number), changed=r.run_id in best),
            *[Cell(short_value(r.value(k, _MISSING))) for k in knobs],
            *[Cell(_fmt_metric(c, r.metrics[c]) if c in r.metrics else _MISSING) for c in columns],
            Cell(state, changed=r.run_id in best),
            Cell(str(int(r.metrics["epochs"])) if "epochs" in r.metrics else _MISSING),
            Cell(f"{seconds / 60:.1f}" if seconds is not None else _MISSING),
        ])
    names = [objective or "objective" if c == "objective" else c for c in columns]
    header = ["#", *[short_key(k) for k in knobs], *names, "state", "epochs", "min"]
    return Trials(frame=pd.DataFrame(rows, columns=header, dtype=object))


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
