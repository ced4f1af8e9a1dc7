"""What a study's processes share: the `StudyPlan` (picklable, it crosses a process spawn) and the `StudySummary` it ends with."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from capexp.study.space import SearchSpace


@dataclass
class StudySummary:
    """Where a study stands after `run_study`."""

    name: str
    storage: str  # where the trials live (password masked)
    parent_run_id: str
    metric: str
    direction: str
    trials: int  # asked for (complete + pruned)
    complete: int
    pruned: int
    failed: int
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_run_id: str | None = None
    front: list[str] = field(default_factory=list)  # a study of several objectives: its Pareto front, a line each
    finalists: list[str] = field(default_factory=list)  # what the finalists showed at full budget, as lines

    def report(self) -> str:
        """A few lines for the console."""
        lines = [
            f"study {self.name}: {self.complete} complete, {self.pruned} pruned, {self.failed} failed "
            f"(asked for {self.trials}); storage {self.storage}; MLflow parent run {self.parent_run_id}"
        ]
        if self.best_trial is not None and self.best_value is not None:
            values = ", ".join(f"{k}={json.dumps(v)}" for k, v in self.best_params.items())
            lines.append(f"best: trial {self.best_trial} (run {self.best_run_id}), {self.metric}={self.best_value:.4f}; {values}")
        return "\n".join([*lines, *self.front, *self.finalists])


@dataclass(frozen=True)
class StudyPlan:
    """Everything a worker needs; picklable, since it crosses a process spawn."""

    name: str
    storage: str | None
    base: str  # the base spec file, as the user named it (for messages)
    snapshot: str  # the base as resolved when the command started (extends and --set applied)
    space: SearchSpace  # fitted to the base decoder's depth
    metric: str
    direction: str
    num_epochs: int
    trials: int
    experiment: str
    tracking_uri: str
    parent_run_id: str
    heartbeat_interval: int
    seed_offset: int  # trials in the study when this command started: a resume samples anew
    threads: int  # torch threads per worker (0: leave torch's default)
    log_level: int
    keep_models: int | None = None  # only the best k trials keep their logged models (None: every trial)
    workers: int = 1  # worker processes on this machine (for the time-left estimate)
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, direction) each; metric and direction are the first
    gpus: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES values the workers take in turn (capexp.study.gpus)
    spawn: bool = False  # run even one worker in its own process (to pin its GPU)
