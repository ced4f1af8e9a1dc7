"""The line a study prints as each trial ends: number, state (and why), objective, best so far,
time left, and the trial's values, wrapped to the terminal so every value stays readable."""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

from capexp.study.front import best_text, value_text
from capexp.study.plan import StudyPlan
from capexp.tracking import ATTR_ERROR
from capexp.tracking.names import ATTR_CONTROL

__all__ = ["short_key", "short_value", "values_text", "trial_line", "run_line"]

_SHORT = {  # the seed's knobs, the learning rates and the encoder's knobs, as people say them
    "clip_config.image_size": "size",
    "gpt2_config.visual_tokens_length": "k",
    "gpt2_config.n_layers_to_freeze": "freeze",
    "training_config.subset_ratio": "subset",
    "training_config.learning_rate": "lr",
    "training_config.encoder_learning_rate": "enc_lr",
    "training_config.label_smoothing": "smooth",
    "clip_config.model": "encoder",
    "clip_config.train_last_blocks": "blocks",
    "clip_config.features": "feat",
}


def short_key(key: str) -> str:
    """A spec key as the progress line names it: `k` for `gpt2_config.visual_tokens_length`, else its last part."""
    return _SHORT.get(key, key.rsplit(".", 1)[-1])


def short_value(value: Any) -> str:
    """224 for [224, 224], 0.000748 as 0.00075, a section by its first field (self-critical epochs), others
    as JSON would print them, shortly."""
    if isinstance(value, dict):
        return short_value(next(iter(value.values()))) if value else "{}"
    if isinstance(value, list):
        return short_value(value[0]) if value and all(v == value[0] for v in value) else "x".join(map(short_value, value))
    if isinstance(value, float):
        return f"{value:.2g}" if abs(value) < 1e-3 else f"{value:.3g}"
    return str(value)


def _duration(trial: Any) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


def _outcome(trial: Any, plan: StudyPlan) -> str:
    state, metric = trial.state.name, plan.metric
    if state == "COMPLETE":
        return value_text(trial, plan)
    if state == "PRUNED":
        steps = sorted(trial.intermediate_values)
        last = f" ({metric} {trial.intermediate_values[steps[-1]]:.4f})" if steps else ""
        return f"pruned at epoch {steps[-1] if steps else 0}{last}"
    reason = trial.user_attrs.get(ATTR_ERROR, "see its run")
    return f"FAILED ({reason})" if state == "FAIL" else state


def trial_line(study: Any, trial: Any, plan: StudyPlan, width: int | None = None) -> str:
    """What a study prints when `trial` (a FrozenTrial of `study`) has ended, at most `width` columns a line."""
    import optuna

    width = width or shutil.get_terminal_size((80, 24)).columns
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    done = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in finished)
    control = " (control)" if trial.user_attrs.get(ATTR_CONTROL) else ""
    parts = [f"trial {trial.number}{control} {_outcome(trial, plan)}"]
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        parts.append(best_text(study, complete, plan))
    parts.append(f"{done}/{plan.trials} done")
    durations = [d for d in map(_duration, finished) if d is not None]
    if durations and done < plan.trials:
        left = (plan.trials - done) * (sum(durations) / len(durations)) / max(1, plan.workers)
        parts.append(f"~{_minutes(left)} left")
    values = {key: plan.space.params[key].decode(stored) for key, stored in trial.params.items() if key in plan.space.params}
    parts.append(values_text(values))
    return _wrapped(parts, width)


def values_text(values: dict[str, Any]) -> str:
    """Searched values as the progress lines show them: `size=224 k=4`."""
    return " ".join(f"{short_key(k)}={short_value(v)}" for k, v in values.items())


def _wrapped(parts: list[str], width: int) -> str:
    return textwrap.fill(" | ".join(parts), width=max(40, width), subsequent_indent="    ", break_on_hyphens=False,
                         break_long_words=False)


def run_line(label: str, outcome: str, values: dict[str, Any], width: int | None = None) -> str:
    """What a study prints when a run that is not a trial (the control outside the space, a finalist) has ended."""
    return _wrapped([f"{label} {outcome}", values_text(values)], width or shutil.get_terminal_size((80, 24)).columns)

