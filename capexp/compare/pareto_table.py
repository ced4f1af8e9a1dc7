"""`capexp compare --study` on a study of several objectives: its Pareto front, one row per member.

Each complete trial's values are read back from its run as the study scored it (the best epoch's
value; the last one for run totals such as `train_minutes`), so the table needs only the MLflow
store. The member the default `--pick` rule would choose is marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from capexp.compare.records import RunRecord, StudyParent
from capexp.compare.table import Cell
from capexp.study.pareto import Member, default_pick, objective_value, pareto_front, parse_pick, pick
from capexp.study.progress import short_key, short_value
from capexp.tracking.names import PARAM_TRIAL_NUMBER, TAG_OPTUNA_STATE, TAG_TRIAL

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["ParetoFront", "load_front", "front_tables", "front_markdown"]


@dataclass
class ParetoFront:
    """A study's Pareto front: its objectives, its members best first by the first, and their runs."""

    study: str
    objectives: list[tuple[str, str]]
    members: list[Member]
    runs: dict[int, RunRecord]  # trial number -> its run
    knobs: list[str]
    picked: int  # the trial the default --pick rule chooses
    complete: int  # complete trials the front was drawn from

    def title(self) -> str:
        goals = ", ".join(f"{d} {m}" for m, d in self.objectives)
        return f"Pareto front of study {self.study} ({goals}): {len(self.members)} of {self.complete} complete trials"

    def grid(self) -> tuple[list[str], list[list[Cell]]]:
        rows = []
        for m in self.members:
            run = self.runs[m.number]
            rows.append([
                Cell(str(m.number), changed=m.number == self.picked),
                *[Cell(short_value(run.value(k, "—"))) for k in self.knobs],
                *[Cell(f"{m.values[metric]:.4f}") for metric, _ in self.objectives],
                Cell("default pick" if m.number == self.picked else ""),
            ])
        header = ["#", *[short_key(k) for k in self.knobs], *[metric for metric, _ in self.objectives], "--pick"]
        return header, rows


def _number(record: RunRecord) -> int | None:
    text = str(record.params.get(PARAM_TRIAL_NUMBER, record.tags.get(TAG_TRIAL, "")))
    return int(text) if text.isdigit() else None


def load_front(study: str, records: Sequence[RunRecord], parent: StudyParent | None) -> ParetoFront | None:
    """The front of `study` from its trial runs `records`; None for a single-objective study or
    one with no complete trial yet."""
    from mlflow import MlflowClient

    if parent is None:
        return None
    client = MlflowClient()
    objectives = parent.objectives
    members, runs = [], {}
    for record in records:
        number = _number(record)
        if not objectives or number is None or record.tags.get(TAG_OPTUNA_STATE) != "COMPLETE":
            continue
        values = {m: objective_value(m, d, [x.value for x in client.get_metric_history(record.run_id, m)])
                  for m, d in objectives}
        if all(v is not None for v in values.values()):
            members.append(Member(number, values))  # type: ignore[arg-type]
            runs[number] = record
    if not members:
        return None
    front = pareto_front(members, objectives)
    picked = pick(front, parse_pick(default_pick(objectives)), objectives, study).number
    return ParetoFront(study, objectives, front, runs, parent.knobs, picked, len(members))


def front_tables(front: ParetoFront, width: int) -> list[Table]:
    """The front as terminal tables `width` columns wide, the first titled."""
    from capexp.compare.render import terminal_tables

    tables = terminal_tables(*front.grid(), width)
    tables[0].title = front.title()
    return tables


def front_markdown(front: ParetoFront) -> str:
    """The front as a Markdown section, to follow the trials table."""
    from capexp.compare.render import render

    table = render(front, "md")  # type: ignore[arg-type] - any table with a grid() renders
    return f"\n### Pareto front\n\n{front.title()}; bold: the member `--best-spec` picks by default.\n\n{table}"
