"""From a study to a final model: the best trial's values applied to a full-budget spec."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from capexp.errors import CapexpError
from capexp.study.front import picked_trial
from capexp.study.space import load_space
from capexp.spec.schema import Spec
from capexp.spec.loading import load_spec
from capexp.study.storage import existing_storage
from capexp.study.control import CONTROL
from capexp.tracking import ATTR_BASE, ATTR_METRIC, ATTR_RUN_ID, ATTR_SPACE
from capexp.tracking.names import ATTR_WINNER

__all__ = ["best_spec"]


def best_spec(name: str, *, base: Path | None = None, space: Path | None = None, storage: str | None = None,
              overrides: Sequence[str] = (), pick: str | None = None) -> Spec:
    """The spec of study `name`'s best trial at full budget: `base` (default: the study's own base
    spec file) with the trial's values and `overrides`, without the search space's `budget`. Once
    finalists ran (and without `pick`), the best is their winner (the control: the base's own values).
    With several objectives, or `pick`, the member of the Pareto front the `pick` rule chooses."""
    import optuna

    from capexp.backbones import decoder_depth

    study = optuna.load_study(study_name=name, storage=existing_storage(storage, name))
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise CapexpError(f"study {name} has no complete trial yet. Run `capexp study --name {name}` until one completes.")
    winner = study.user_attrs.get(ATTR_WINNER) if pick is None else None  # finalists run on one objective only
    if winner is None or winner == CONTROL:
        best, scored = picked_trial(study, name, pick)
    else:
        best, scored = study.trials[int(winner)], None
    base = base or Path(study.user_attrs.get(ATTR_BASE, ""))
    space_path = space or Path(study.user_attrs.get(ATTR_SPACE, "studies/default.json"))
    if not base.is_file():
        raise CapexpError(f"study {name}'s base spec {str(base)!r} is not a file here. Name the full-budget spec with --spec.")
    full = load_spec(base, overrides)
    depth = decoder_depth(full.gpt2_config.model, full.gpt2_config.tokenizer)
    params = load_space(space_path).fit_to_depth(depth, str(space_path)).params  # the values the trials ran
    values = {} if winner == CONTROL else {key: params[key].decode(stored) for key, stored in best.params.items()}
    sets = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    spec = load_spec(base, [*overrides, *sets, f"id={name}-best"])
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
    metric = study.user_attrs.get(ATTR_METRIC, "objective")
    if winner == CONTROL:
        notes = f"The control (the base's own values) won study {name}'s finalists at the full budget of {base}."
    elif winner is not None:
        notes = (f"Trial {best.number} won study {name}'s finalists (best mean full-budget {metric} on validation) "
                 f"at the full budget of {base}: {shown}.")
    else:
        notes = (f"Best trial {best.number} of study {name} ({scored or f'{metric} {best.value:.4f}'}, run "
                 f"{best.user_attrs.get(ATTR_RUN_ID, '?')}) at the full budget of {base}: {shown}.")
    return spec.model_copy(update={"notes": notes})
