"""A study's finalists as a table: each finalist's values, its objective on the trial budget, its
full-budget mean ± sd over seeds and the winner; then one sentence on the fidelity check (how
the trial budget ranked them)."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from capexp.compare.records import RunRecord, StudyParent
from capexp.compare.table import Cell
from capexp.tracking import TAG_TRIAL
from capexp.tracking.names import TAG_CONTROL, TAG_FINALIST

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Finalists", "split_finalists", "build_finalists"]

_CONTROL = "control"


@dataclass
class Finalists:
    """The finalists, best mean first, and the fidelity sentence that goes under them."""

    frame: pd.DataFrame
    sentence: str

    def grid(self) -> tuple[list[str], list[list[Cell]]]:
        return list(self.frame.columns), [list(row) for row in self.frame.itertuples(index=False)]


def split_finalists(records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """A study's child runs as (trials and the control, finalists)."""
    return [r for r in records if TAG_FINALIST not in r.tags], [r for r in records if TAG_FINALIST in r.tags]


def _sources(searched: Sequence[RunRecord]) -> dict[str, RunRecord]:
    """Each finalist key's trial-budget run: trials by number, the control outside the space as "control"."""
    sources = {r.tags[TAG_TRIAL]: r for r in searched if TAG_TRIAL in r.tags and r.status == "FINISHED"}
    for r in searched:
        if r.tags.get(TAG_CONTROL) == "true" and TAG_TRIAL not in r.tags and r.status == "FINISHED":
            sources[_CONTROL] = r
    return sources


_ABSENT = object()  # a knob the run does not log (a conditional param left out)


def _values(run: RunRecord | None, knobs: Sequence[str]) -> str:
    from capexp.study.progress import short_key, short_value

    if run is None:
        return "—"
    shown = " ".join(f"{short_key(k)}={short_value(run.value(k))}" for k in knobs if run.value(k, _ABSENT) is not _ABSENT)
    return textwrap.fill(shown, width=20, break_long_words=False, break_on_hyphens=False)


def build_finalists(records: Sequence[RunRecord], finals: Sequence[RunRecord], knobs: Sequence[str],
                    parent: StudyParent | None) -> Finalists | None:
    """The Finalists table of a study whose child runs are `records` (trials, control) and `finals`; None without finalists."""
    import pandas as pd

    from capexp.study.finalists import fidelity_sentence, rank_correlations

    if not finals:
        return None
    sources = _sources(records)
    groups: dict[str, list[float]] = {}
    for r in finals:
        scores = groups.setdefault(r.tags[TAG_FINALIST], [])
        if r.status == "FINISHED" and "objective" in r.metrics:
            scores.append(r.metrics["objective"])
    sign = -1 if parent is None or parent.direction != "minimize" else 1
    order = sorted(groups, key=lambda k: (not groups[k], sign * statistics.fmean(groups[k]) if groups[k] else 0.0))
    rows = []
    for key in order:
        source, full = sources.get(key), groups[key]
        control = key == _CONTROL or (source is not None and source.tags.get(TAG_CONTROL) == "true")
        label = _CONTROL if key == _CONTROL else f"{key} (control)" if control else key
        search = f"{source.metrics['objective']:.4f}" if source is not None and "objective" in source.metrics else "—"
        mean = f"{statistics.fmean(full):.4f}" if full else "—"
        spread = f" ± {statistics.stdev(full):.4f}" if len(full) > 1 else ""
        won = parent is not None and parent.winner == key
        rows.append([Cell(label, changed=won), Cell(_values(source, knobs)), Cell(search), Cell(mean + spread),
                     Cell("winner" if won else "", changed=won)])
    header = ["trial", "values", "trial budget", "full budget (mean ± sd)", "winner"]
    seeds = max(len(v) for v in groups.values())
    pairs = [(sources[k].metrics["objective"], statistics.fmean(groups[k])) for k in groups
             if groups[k] and k in sources and "objective" in sources[k].metrics]
    fidelity = rank_correlations(*zip(*pairs)) if pairs else {}
    sentence = (f"{parent.metric if parent and parent.metric else 'The objective'} on validation, {seeds} seed(s) "
                f"per finalist. " + fidelity_sentence(fidelity.get("spearman"), len(pairs), fidelity.get("spearman_p")))
    return Finalists(frame=pd.DataFrame(rows, columns=header, dtype=object), sentence=sentence)
