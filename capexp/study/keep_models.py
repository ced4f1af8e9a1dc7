"""`capexp study --keep-models K`: only the best K trials keep their logged models.

Every trial run logs its best checkpoint as a model (tagged with the study and trial). With K
set, a worker deletes, after each trial, the models of finished trials outside the best K
complete ones (pruned and failed trials are never among them); their runs keep metrics, curves
and captions. A model `capexp register` registered is kept regardless.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from capexp.errors import CapexpError, warn
from capexp.study.front import ranked
from capexp.study.plan import StudyPlan
from capexp.tracking import MODEL_NAME, TAG_REGISTERED, TAG_STUDY, TAG_TRIAL, delete_model, experiment_id, use_store

if TYPE_CHECKING:
    import optuna
    from mlflow.entities import LoggedModel

__all__ = ["check_keep_models", "keep_best_models"]

log = logging.getLogger("capexp")


def check_keep_models(keep_models: int | None) -> None:
    """`--keep-models` must be at least 1 (None: every trial keeps its model)."""
    if keep_models is not None and keep_models < 1:
        raise CapexpError(f"--keep-models must be 1 or more, got {keep_models}; leave it out to keep every trial's model.")


def _study_models(experiment: str, study: str) -> list[LoggedModel]:
    """Every logged model of the study's trials (all pages)."""
    from mlflow import MlflowClient

    client, token = MlflowClient(), None
    models: list[LoggedModel] = []
    while True:
        page = client.search_logged_models(
            experiment_ids=[experiment], filter_string=f"tags.`{TAG_STUDY}` = '{study}' AND name = '{MODEL_NAME}'",
            max_results=100, page_token=token)
        models += page
        token = page.token
        if not token:
            return models


def keep_best_models(study: optuna.Study, plan: StudyPlan) -> int:
    """Delete the models of finished trials outside the best `plan.keep_models`; return how many went."""
    from mlflow.exceptions import MlflowException
    from optuna.trial import TrialState

    if plan.keep_models is None:
        return 0
    trials = study.get_trials(deepcopy=False)
    complete = ranked(study, [t for t in trials if t.state == TrialState.COMPLETE], plan)
    keep = {str(t.number) for t in complete[: plan.keep_models]}
    finished = {str(t.number) for t in trials if t.state.is_finished()}  # a running trial may be logging its model
    use_store(plan.tracking_uri)
    exp = experiment_id(plan.experiment, create=False)
    if exp is None:
        return 0
    dropped = 0
    for model in _study_models(exp, plan.name):
        trial = model.tags.get(TAG_TRIAL)
        if trial in keep or trial not in finished or model.tags.get(TAG_REGISTERED) == "true":
            continue
        try:
            delete_model(model)
            dropped += 1
        except (MlflowException, OSError) as e:  # another worker deleted it just now
            warn(f"study {plan.name}: could not delete model {model.model_id} of trial {trial}: {e}")
    if dropped:
        log.info("study %s: deleted %d model(s) outside the best %d trials", plan.name, dropped, plan.keep_models)
    return dropped
