"""A run's best checkpoint as an MLflow pyfunc model that `mlflow models serve` runs.

Every run logs its best checkpoint as a model (`log_checkpoint_model`, an MLflow LoggedModel
named `captioner`, linked to the run and to its metrics); `capexp register` registers that model.
It is logged from code (capexp/pyfunc_model.py, no pickled objects) with the `checkpoint/` folder
as its artifact and capexp's own source bundled (`code_paths`), so any machine with capexp's
dependencies can serve it, by its id or its registered name:

    MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db \\
        mlflow models serve -m models:/NAME@champion --env-manager local -h 127.0.0.1 -p 5001

Request (`POST /invocations`, `Content-Type: application/json`): the image file bytes,
base64-encoded, in a column `image`; one row per image; `params.beam_size` is optional:

    {"dataframe_split": {"columns": ["image"], "data": [["/9j/4AAQSkZJRg..."]]}, "params": {"beam_size": 3}}

(`{"dataframe_records": [{"image": "/9j/4AAQ..."}]}` works too.) Response:

    {"predictions": [{"caption": "a dog runs on the grass"}]}
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capexp.errors import CapexpError

if TYPE_CHECKING:
    from capexp.spec.schema import Spec

__all__ = ["REQUEST_EXAMPLE", "RegisteredModel", "log_checkpoint_model", "register_run"]

log = logging.getLogger("capexp")

REQUEST_EXAMPLE = (
    'POST /invocations with Content-Type: application/json and body '
    '{"dataframe_split": {"columns": ["image"], "data": [["<base64 of the image file>"]]}, '
    '"params": {"beam_size": 3}} (params optional); the answer is {"predictions": [{"caption": "..."}]}.'
)
_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")


@dataclass
class RegisteredModel:
    """What `register_run` registered."""

    name: str
    version: str
    alias: str
    run_id: str
    model_uri: str  # models:/NAME@alias


def _requirements(spec: Spec) -> list[str]:
    """capexp's dependencies and the spec's preset packages, pinned to the versions installed here.

    capexp itself travels as code. Only an env manager other than `local` reads these.
    """
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    from capexp.backbones import preset_distributions

    names = [r.name for r in map(Requirement, requires("capexp") or []) if r.marker is None]  # no [test] extras
    cfg = spec.gpt2_config
    names += sorted(preset_distributions(cfg.model, cfg.tokenizer))  # outside capexp's declared dependencies
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={version(name).split('+')[0]}")  # no local tag: +cpu is not on PyPI
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


def _input_example():
    """A one-row request (a 16x16 grey PNG): MLflow loads the model and runs it on this before
    logging, and keeps it as the model's `serving_input_example.json`."""
    import io

    import pandas as pd
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(buffer, format="PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


def _signature(beam_size: int):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema([ColSpec("string", "caption")]),
        params=ParamSchema([ParamSpec("beam_size", "long", beam_size)]),
    )


def log_checkpoint_model(checkpoint: Path, run_id: str, *, metrics: dict[str, float] | None = None,
                         tags: dict[str, str] | None = None) -> str:
    """Log a checkpoint folder as run `run_id`'s model; return its id (`m-...`).

    The model (named `captioner`) is linked to the run at the checkpoint's epoch, carries the
    run's params, and gets the checkpoint's epoch metrics plus `metrics` (the run's best_*) as
    its own, so the MLflow UI's "Logged models" and `mlflow.search_logged_models` show its scores.
    The run itself is not reopened: its status and times stay as they were.
    """
    import time

    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelOutput, Metric

    import capexp
    from capexp.model.checkpoint import CheckpointMeta
    from capexp.tracking import ARTIFACT_CHECKPOINT, MODEL_NAME, TAG_VERSION

    meta = CheckpointMeta.read(checkpoint)
    spec, step = meta.spec, int(meta.epoch or 0)
    client = MlflowClient()
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
        params={**run.data.params, "run_name": run.info.run_name or spec.id, "epoch": str(meta.epoch)},
        tags={TAG_VERSION: meta.capexp_version or capexp.__version__, **(tags or {})},
    )
    active = mlflow.active_run()
    linked = active is not None and active.info.run_id == run_id  # log_model links the active run's metrics at `step`
    mlflow.pyfunc.log_model(
        model_id=logged.model_id,
        python_model=str(_MODEL_FILE),
        artifacts={ARTIFACT_CHECKPOINT: str(checkpoint)},
        code_paths=[str(Path(capexp.__file__).parent)],
        signature=_signature(spec.evaluation.beam_size),
        input_example=_input_example(),
        pip_requirements=_requirements(spec),
        metadata={"capexp_run_id": run_id, "capexp_epoch": meta.epoch, "request": REQUEST_EXAMPLE},
        step=step,
    )
    if not linked:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
    now = int(time.time() * 1000)
    scores = {**({} if linked else meta.metrics), **(metrics or {})}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step, model_id=logged.model_id) for k, v in scores.items()])
    log.info("run %s (%s): epoch %s logged as model %s", spec.id, run_id, meta.epoch, logged.model_id)
    return logged.model_id


def _full_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """A trained-only checkpoint with its frozen weights put back from the base: every weight, in `folder`."""
    from dataclasses import replace

    from capexp.model.checkpoint import read_checkpoint, save_checkpoint

    found = read_checkpoint(checkpoint)
    captioner = found.load("cpu")
    return save_checkpoint(captioner.model, folder / "checkpoint", replace(found.meta, frozen=None))


def register_run(
    run: str,
    name: str,
    *,
    alias: str = "champion",
    experiment: str | None = None,
    tracking_uri: str | None = None,
) -> RegisteredModel:
    """Register run `run`'s logged model as `name` and point `alias` at the new version.

    `run` is a run id or a run name (searched in `experiment`, else in every experiment). The
    run's own model (logged when it trained) is registered as it is, with no second copy of its
    weights; a run from before runs logged models gets its model logged from its `checkpoint`
    artifact first. A run whose checkpoint leaves out frozen decoder blocks gets a self-contained
    model (every weight) logged and registered instead, so the registered model needs no base.
    The run itself is not reopened, so its status and times stay as they were.
    """
    import mlflow
    from mlflow import MlflowClient

    from capexp.model.checkpoint import CheckpointMeta
    from capexp.tracking import TAG_REGISTERED, resolve_model_source, run_model

    if not name.strip() or "/" in name or "@" in name:
        raise CapexpError(f"--name {name!r}: a registered model name must be non-empty, without '/' or '@'.")
    source = resolve_model_source(run, experiment=experiment, tracking_uri=tracking_uri)
    run_id, checkpoint = source.tracked_run("capexp register"), source.folder
    meta = CheckpointMeta.read(checkpoint)
    if meta.frozen is not None:  # a registered model holds every weight: log a self-contained copy
        with tempfile.TemporaryDirectory(prefix="capexp-register-") as tmp:
            model_id = log_checkpoint_model(_full_checkpoint(checkpoint, Path(tmp)), run_id)
    else:
        model = run_model(run_id)
        model_id = model.model_id if model is not None else log_checkpoint_model(checkpoint, run_id)
    client = MlflowClient()
    client.set_logged_model_tags(model_id, {TAG_REGISTERED: "true"})  # `capexp study --keep-models` keeps it
    version = mlflow.register_model(f"models:/{model_id}", name)
    client.update_model_version(name, version.version, description=f"capexp run {meta.spec.id} ({run_id}), "
                                f"epoch {meta.epoch}, model {model_id}. {REQUEST_EXAMPLE}")
    client.set_registered_model_alias(name, alias, version.version)
    log.info("registered run %s (%s) as %s version %s, alias @%s", meta.spec.id, run_id, name, version.version, alias)
    return RegisteredModel(name, str(version.version), alias, run_id, f"models:/{name}@{alias}")
