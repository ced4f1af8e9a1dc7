"""Every name capexp gives things in MLflow and Optuna: run tags, params, artifacts, trial attributes.

Other modules import these; none writes one of these strings itself, so renaming is one edit
and a reader finds every name a run can carry in this one file.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_EXPERIMENT", "TAG_EXPERIMENT_KIND", "EXPERIMENT_KIND",
    "TAG_SPEC_HASH", "TAG_VERSION", "TAG_GIT", "TAG_INIT_FROM", "TAG_DEVICE", "TAG_ENCODER_SKIPPED", "TAG_PRUNED",
    "TAG_STUDY", "TAG_TRIAL", "TAG_STUDY_ROLE", "STUDY_PARENT", "TAG_BEST_TRIAL", "TAG_BEST_RUN_ID", "BEST_PREFIX",
    "TAG_EVAL_DECODING", "TAG_ENSEMBLE", "TAG_NOTE", "TAG_PARENT", "TAG_OPTUNA_STATE", "PARAM_TRIAL_NUMBER",
    "PARAM_VOCABULARY_SIZE", "PARAM_OBJECTIVE", "PARAM_DIRECTION", "PARAM_STUDY_BASE", "PARAM_STUDY_SPACE",
    "PARAM_STUDY_STORAGE", "PARAM_SAMPLER", "PARAM_PRUNER", "SPACE_PREFIX", "IMPORTANCE_PREFIX", "STUDY_PLOTS",
    "ARTIFACT_CHECKPOINT", "ARTIFACT_EVAL_PER_IMAGE", "CHECKPOINT_META", "CHECKPOINT_WEIGHTS", "MODEL_NAME", "TAG_REGISTERED",
    "ATTR_WORKER", "ATTR_RUN_ID", "ATTR_RUN_NAME", "ATTR_METRIC", "ATTR_BASE_HASH", "ATTR_BASE", "ATTR_SPACE", "ATTR_ERROR",
    "ATTR_RETRY_OWED", "TAG_CONTROL", "TAG_FINALIST", "TAG_FINALIST_SEED", "TAG_WINNER", "TAG_WORKER", "FINALIST_PREFIX",
    "FIDELITY_PREFIX", "ATTR_CONTROL", "ATTR_WINNER",
    "METRIC_TRAIN_MINUTES", "PARAM_OBJECTIVES", "PARAM_DIRECTIONS", "TAG_PARETO_FRONT", "PARETO_PLOT",
    "OBJECTIVE_IMPORTANCE_PREFIX",
]

DEFAULT_EXPERIMENT = "capexp"

# ---------------------------------------------------------------------------- experiment tags
# MLflow's own: the UI opens an experiment in its training view (runs table, charts) for this kind,
# in its GenAI view (traces, evaluation runs) when the tag is absent or "genai_development"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# ---------------------------------------------------------------------------- run tags
TAG_SPEC_HASH = "capexp.spec_hash"
TAG_VERSION = "capexp.version"
TAG_GIT = "capexp.git_commit"
TAG_INIT_FROM = "capexp.init_from"  # the checkpoint folder a run's weights started from (`training_config.init_from`)
TAG_DEVICE = "capexp.device"
TAG_ENCODER_SKIPPED = "capexp.skipped_images"
TAG_PRUNED = "capexp.pruned"  # "true" on a trial stopped early by the pruner
TAG_STUDY = "capexp.study"  # study name on a study's parent and trial runs (and the trials' logged models)
TAG_TRIAL = "capexp.trial"  # trial number, on each trial run and its logged model
TAG_OPTUNA_STATE = "optuna.state"  # COMPLETE, PRUNED or FAIL, on each trial run
TAG_STUDY_ROLE = "capexp.study_role"  # STUDY_PARENT on a study's parent run
STUDY_PARENT = "parent"
TAG_CONTROL = "capexp.control"  # "true" on a study's control run: the base spec's own values of the searched keys
TAG_FINALIST = "capexp.finalist"  # on a finalist run: the trial it retrains at full budget ("control": the control)
TAG_FINALIST_SEED = "capexp.finalist_seed"  # on a finalist run: its seed
TAG_WINNER = "capexp.winner"  # on a study's parent run: the finalist with the best mean full-budget objective
TAG_WORKER = "capexp.worker"  # on a control or finalist run: host:pid:start-time of the process running it
FINALIST_PREFIX = "finalist."  # finalist.<trial>.mean and .sd: full-budget objectives, on a study's parent run
FIDELITY_PREFIX = "fidelity."  # fidelity.spearman, .spearman_p and .kendall: how the trial budget ranked the finalists
TAG_BEST_TRIAL = "capexp.best_trial"  # on a study's parent run
TAG_BEST_RUN_ID = "capexp.best_run_id"
BEST_PREFIX = "best."  # best.<dotted key>: the best trial's values, as tags of the parent run
TAG_PARETO_FRONT = "capexp.pareto_front"  # on a study of several objectives' parent run: the front's trial numbers
TAG_EVAL_DECODING = "capexp.{split}_decoding"  # how the logged <split>_* captions were decoded
TAG_ENSEMBLE = "capexp.ensemble"  # on an ensemble's evaluation run: its members' run ids, comma-separated
TAG_NOTE = "mlflow.note.content"  # MLflow's own: the run description
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: set on child runs

# ---------------------------------------------------------------------------- params
# A run's params are its spec's dotted keys (capexp.spec.loading.flatten) plus:
PARAM_VOCABULARY_SIZE = "vocabulary_size"
PARAM_TRIAL_NUMBER = "optuna.trial_number"  # a param, so MLflow's charts can use it as an axis
# A study's parent run: the metric the trials optimise and "minimize"/"maximize", where it came from
PARAM_OBJECTIVE = "objective.metric"
PARAM_DIRECTION = "objective.direction"
# A study of several objectives: all of them, comma-separated, in order (the two above: the first one)
PARAM_OBJECTIVES = "objective.metrics"
PARAM_DIRECTIONS = "objective.directions"
PARAM_STUDY_BASE = "study.base"
PARAM_STUDY_SPACE = "study.space"
PARAM_STUDY_STORAGE = "study.storage"
PARAM_SAMPLER = "sampler"
PARAM_PRUNER = "pruner"
STUDY_PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values")  # plots/<name>.png
PARETO_PLOT = "pareto_front"  # plots/pareto_front.png, for a study of several objectives
IMPORTANCE_PREFIX = "importance."  # importance.<dotted key>: a knob's fANOVA importance, on a study's parent run
# importance/<metric>/<dotted key>: the same for the second and later objectives of a study of several
OBJECTIVE_IMPORTANCE_PREFIX = "importance/"
SPACE_PREFIX = "space."  # space.<dotted key>: each searched parameter's definition

# ---------------------------------------------------------------------------- metrics
METRIC_TRAIN_MINUTES = "train_minutes"  # wall time of a run's epochs so far, logged each epoch: a cost objective

# ---------------------------------------------------------------------------- artifacts
ARTIFACT_CHECKPOINT = "checkpoint"  # the best checkpoint's folder: in a logged model's artifacts/ (older runs: the run's)
# `capexp evaluate`'s per-image record (JSON): split, decoding, BERTScore model and, per image, its id, caption,
# references, METEOR and BERTScore F1; `capexp compare --significance` resamples the images from it
ARTIFACT_EVAL_PER_IMAGE = "evaluation/{split}_per_image.json"
CHECKPOINT_META = "capexp.json"  # in that folder, beside the weights
CHECKPOINT_WEIGHTS = "model.safetensors"

# ---------------------------------------------------------------------------- logged models
MODEL_NAME = "captioner"  # the name of each run's logged model (its best checkpoint as a pyfunc model)
TAG_REGISTERED = "capexp.registered"  # "true" on a logged model `capexp register` registered: never deleted

# ---------------------------------------------------------------------------- Optuna trial user attributes
ATTR_WORKER = "capexp.worker"  # host:pid:start-time of the process running a trial
ATTR_RUN_ID = "mlflow_run_id"
ATTR_RUN_NAME = "capexp.run_name"  # an enqueued spec's id: its trial's run name
ATTR_METRIC = "capexp.objective_metric"
ATTR_BASE_HASH = "capexp.base_hash"
ATTR_BASE = "capexp.base"  # the base spec file the study was created with
ATTR_SPACE = "capexp.space"  # its search-space file
ATTR_ERROR = "capexp.error"  # why a trial failed (diverged, out of memory)
ATTR_CONTROL = "capexp.control"  # True on the control trial (the base spec's own values, inside the space)
ATTR_WINNER = "capexp.winner"  # on a study: the finalists' winner, a trial number or "control"
ATTR_RETRY_OWED = "capexp.retry_owed"  # set on a dead worker's trial before it is failed: it must be queued again
