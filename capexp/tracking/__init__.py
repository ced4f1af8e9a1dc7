"""MLflow tracking: every name capexp gives runs (`names`), the store (`store`), runs' logged
models (`models`) and the one run resolver (`runs`). Re-exported here, so `from capexp.tracking import TAG_STUDY, use_store` works."""

from capexp.tracking.names import (
    ARTIFACT_CHECKPOINT,
    ATTR_BASE_HASH,
    ATTR_ERROR,
    ATTR_METRIC,
    ATTR_RUN_ID,
    ATTR_RUN_NAME,
    ATTR_WORKER,
    BEST_PREFIX,
    CHECKPOINT_META,
    CHECKPOINT_WEIGHTS,
    MODEL_NAME,
    DEFAULT_EXPERIMENT,
    EXPERIMENT_KIND,
    PARAM_DIRECTION,
    PARAM_OBJECTIVE,
    PARAM_PRUNER,
    PARAM_SAMPLER,
    PARAM_STUDY_BASE,
    PARAM_STUDY_SPACE,
    PARAM_STUDY_STORAGE,
    PARAM_VOCABULARY_SIZE,
    SPACE_PREFIX,
    STUDY_PARENT,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_DEVICE,
    TAG_ENCODER_SKIPPED,
    TAG_EVAL_DECODING,
    TAG_EXPERIMENT_KIND,
    TAG_GIT,
    TAG_NOTE,
    TAG_PARENT,
    TAG_PRUNED,
    TAG_REGISTERED,
    TAG_SPEC_HASH,
    TAG_STUDY,
    TAG_STUDY_ROLE,
    TAG_TRIAL,
    TAG_VERSION,
)
from capexp.tracking.models import delete_model, model_checkpoint, run_model
from capexp.tracking.runs import (
    experiment_ids, experiment_runs, find_run, find_runs, has_checkpoint, is_run_id, run_checkpoint, search_runs, store_uri,
)
from capexp.tracking.store import artifact_root, experiment_id, param_value, resolve_tracking_uri, use_store

__all__ = [
    "DEFAULT_EXPERIMENT", "TAG_EXPERIMENT_KIND", "EXPERIMENT_KIND", "TAG_SPEC_HASH", "TAG_VERSION", "TAG_GIT", "TAG_DEVICE", "TAG_ENCODER_SKIPPED",
    "TAG_PRUNED", "TAG_STUDY", "TAG_TRIAL", "TAG_STUDY_ROLE", "STUDY_PARENT", "TAG_BEST_TRIAL",
    "TAG_BEST_RUN_ID", "BEST_PREFIX", "TAG_EVAL_DECODING", "TAG_NOTE", "TAG_PARENT", "PARAM_VOCABULARY_SIZE",
    "PARAM_OBJECTIVE", "PARAM_DIRECTION", "PARAM_STUDY_BASE", "PARAM_STUDY_SPACE", "PARAM_STUDY_STORAGE",
    "PARAM_SAMPLER", "PARAM_PRUNER", "SPACE_PREFIX", "ARTIFACT_CHECKPOINT", "CHECKPOINT_META",
    "CHECKPOINT_WEIGHTS", "MODEL_NAME", "TAG_REGISTERED", "ATTR_WORKER", "ATTR_RUN_ID", "ATTR_RUN_NAME", "ATTR_METRIC", "ATTR_BASE_HASH",
    "ATTR_ERROR", "resolve_tracking_uri", "artifact_root", "use_store", "experiment_id", "param_value",
    "is_run_id", "store_uri", "experiment_ids", "search_runs", "has_checkpoint", "find_run", "find_runs",
    "run_checkpoint", "experiment_runs", "run_model", "model_checkpoint", "delete_model",
]
