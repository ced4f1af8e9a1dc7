"""`capexp compare RUNS --significance`: each run's BLEU-4, METEOR, CIDEr and BERTScore F1 on the images
`capexp evaluate` scored, and its difference from the first run with a 95% paired-bootstrap interval."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from capexp.errors import CapexpError
from capexp.evaluation.significance import METRICS, RESAMPLES, SEED, Difference, Scored, bootstrap, paired, \
    read_scored, statistics
from capexp.tracking.names import ARTIFACT_EVAL_PER_IMAGE
from capexp.tracking.store import no_download_bars

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["compare_significance", "load_scored", "significance_text"]

_SPLITS = ("test", "val")  # preferred first where every run was evaluated on both


def _splits(client, run_id: str) -> set[str]:
    """The splits run `run_id` holds a per-image evaluation of."""
    folder = os.path.dirname(ARTIFACT_EVAL_PER_IMAGE)
    names = {os.path.basename(f.path) for f in client.list_artifacts(run_id, folder)}
    return {s for s in _SPLITS if os.path.basename(ARTIFACT_EVAL_PER_IMAGE.format(split=s)) in names}


def load_scored(runs: Sequence[str], experiment: str | None = None) -> tuple[list[str], list[Scored]]:
    """The runs' names and their logged per-image evaluations of one split (test where all have it, else val);
    a CapexpError where a run has none or the runs share no split."""
    import mlflow
    from mlflow import MlflowClient

    from capexp.tracking import find_run

    client = MlflowClient()
    ids = [find_run(r, experiment) for r in runs]
    names = [client.get_run(i).info.run_name or i for i in ids]
    splits = [_splits(client, i) for i in ids]
    for given, found in zip(runs, splits):
        if not found:
            raise CapexpError(f"run {given!r} has no per-image evaluation ({ARTIFACT_EVAL_PER_IMAGE}), so "
                              f"--significance has nothing to resample: score it first with `capexp evaluate "
                              f"{given} --split val` (or test), then compare again.")
    common = [s for s in _SPLITS if all(s in found for found in splits)]
    if not common:
        held = ", ".join(f"{n!r} on {'/'.join(sorted(f))}" for n, f in zip(runs, splits))
        raise CapexpError(f"the runs were evaluated on different splits ({held}): evaluate them on the same split "
                          f"with `capexp evaluate RUN --split test|val`.")
    path = ARTIFACT_EVAL_PER_IMAGE.format(split=common[0])
    with no_download_bars():
        scored = [read_scored(mlflow.artifacts.load_text(f"runs:/{i}/{path}")) for i in ids]
    return names, scored


def _cut(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def significance_text(names: Sequence[str], first: Scored, differences: Sequence[Difference], *,
                      resamples: int = RESAMPLES, width: int = 80) -> str:
    """The table: one row per metric and run, value, difference from the first run and its interval, `*` where
    the interval excludes 0; a heading says what was resampled, and a note what the marks and metrics mean."""
    width = min(width, 80)
    run_width = max(3, min(max(len(n) for n in names), width - 55))
    lines = [f"{'metric':<13} {'run':<{run_width}} {'value':>8} {'vs first':>9}  {'95% interval':^18}"]
    previous = None
    for d in differences:
        label = METRICS[d.metric] if d.metric != previous else ""
        previous = d.metric
        row = f"{label:<13} {_cut(names[d.run], run_width):<{run_width}} {d.value:>8.4f}"
        if d.run:
            row += f" {d.difference:>+9.4f}  [{d.low:+.4f}, {d.high:+.4f}]{' *' if d.significant else ''}"
        lines.append(row)
    heading = (f"{len(first.image_ids)} {first.split} images, decoded {first.decoding}. Differences from the first "
               f"run, {names[0]}: paired bootstrap, {resamples:,} resamples of the images (seed {SEED}).")
    note = (f"* the 95% interval of the difference excludes 0. BLEU-4 (corpus BLEU from summed n-gram counts), "
            f"CIDEr (CIDEr-D, document frequencies from all {len(first.image_ids)} images' references) and BERTScore "
            f"F1 are the values `capexp evaluate` logged; METEOR mean is the mean of per-image METEOR, not the "
            f"corpus METEOR it logged.")
    if not any(d.metric == "meteor" for d in differences):
        note += " METEOR is missing: a run was evaluated without it (no Java, or evaluation.coco_metrics off)."
    wrap = textwrap.TextWrapper(width=width, break_on_hyphens=False)
    return "\n".join([*wrap.wrap(heading), "", *(line.rstrip() for line in lines), "", *wrap.wrap(note)]) + "\n"


def compare_significance(runs: Sequence[str], *, experiment: str | None = None, study: str | None = None,
                         console: Console) -> str:
    """What `capexp compare RUNS --significance` does: load, check, resample, print; returns the text printed."""
    if study is not None or len(runs) < 2:
        raise CapexpError("--significance compares two or more evaluated runs given by name or id "
                          "(`capexp compare A B --significance`), not a --study.")
    names, scored = load_scored(runs, experiment)
    scored = paired(names, scored)
    text = significance_text(names, scored[0], bootstrap(statistics(scored)), width=console.width)
    console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
    return text
