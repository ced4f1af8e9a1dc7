"""Where a spec becomes a run: data, features, model and training, all recorded in MLflow.

`run_spec` is the main job behind `capexp run` and every study trial. Bad input fails before
an MLflow run exists; once one exists, a crash, Ctrl-C, SIGTERM or SIGHUP ends it FAILED or
KILLED with the metrics, the best checkpoint so far (as the run's logged model), the curves and the log kept.
"""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capexp import __version__
from capexp.errors import CapexpError, TrainingDiverged, warn
from capexp.training.outputs import plot_curves, write_captions
from capexp.spec.schema import Spec
from capexp.spec.loading import expand_path, flatten, spec_hash
from capexp.stopping import stoppable, stopped_by
from capexp.tracking import (
    ARTIFACT_CHECKPOINT,
    DEFAULT_EXPERIMENT,
    PARAM_VOCABULARY_SIZE,
    TAG_DEVICE,
    TAG_ENCODER_SKIPPED,
    TAG_GIT,
    TAG_INIT_FROM,
    TAG_PRUNED,
    TAG_SPEC_HASH,
    TAG_STUDY,
    TAG_TRIAL,
    TAG_VERSION,
    experiment_id,
    param_value,
    use_store,
)
from capexp.tracking.names import METRIC_TRAIN_MINUTES
from capexp.tracking.system import system_metrics

if TYPE_CHECKING:
    import torch

    from capexp.backbones import EncoderCard
    from capexp.data import Splits
    from capexp.model.captioner import ClipCap
    from capexp.model.checkpoint import Checkpoint, CheckpointMeta
    from capexp.training.cross_entropy import CaptionData, EpochResult

__all__ = ["RunResult", "run_spec"]

log = logging.getLogger("capexp")


@dataclass
class RunResult:
    """A run that ended FINISHED (a failed one raises): pruned when `on_epoch` stopped it early."""

    run_id: str
    history: list[dict[str, float]]  # metrics per epoch
    best: dict[str, float] = field(default_factory=dict)  # best_<metric>, best_epoch
    pruned: bool = False


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _log_inputs(splits, spec: Spec) -> None:
    import mlflow

    from capexp.data import dataset_frame

    for context, split in (("training", splits.train), ("validation", splits.val)):
        frame = dataset_frame(split)
        name = f"{spec.data_paths.source}-{context}"
        dataset = mlflow.data.from_pandas(frame, name=name)
        try:
            mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException:  # another worker logged the same dataset just now
            mlflow.log_input(dataset, context=context)


@dataclass
class _Inputs:
    """What a run needs, all made before an MLflow run exists (so bad input fails without one)."""

    experiment_id: str
    splits: Splits
    card: EncoderCard
    decoder: tuple[Any, Any]  # the spec's decoder and its tokenizer (`load_spec_decoder`)
    device: torch.device
    init: Checkpoint | None  # `training_config.init_from`, found and checked against the spec


def _prepare(spec: Spec, origin: str, experiment: str, tracking_uri: str | None) -> _Inputs:
    from capexp.backbones import DecoderFacts, resolve_encoder
    from capexp.data import check_inputs, load_data
    from capexp.model.captioner import load_spec_decoder
    from capexp.model.checkpoint import find_checkpoint
    from capexp.spec.checks import check_decoder_fit, check_init_from, check_spec
    from capexp.training.cross_entropy import pick_device

    check_inputs(spec, origin)
    check_spec(spec, origin)
    use_store(tracking_uri)
    exp_id = experiment_id(experiment)
    init = None
    if spec.training_config.init_from:
        try:
            init = find_checkpoint(spec.training_config.init_from, tracking_uri=tracking_uri)
        except CapexpError as e:
            raise CapexpError(f"{origin}: `training_config.init_from`: {e}") from None
        check_init_from(spec, origin, init.spec)
    splits = load_data(spec)
    c = spec.clip_config
    card = resolve_encoder(c.model, c.image_size, c.features, c.train_last_blocks)
    decoder = load_spec_decoder(spec)  # seeds torch: the mapper's initial weights come next from the same stream
    check_decoder_fit(spec, origin, DecoderFacts.of_model(decoder[0]))  # a hub id that validate could not see
    return _Inputs(exp_id, splits, card, decoder, pick_device(spec.training_config.enable_GPU), init)


def _run_tags(spec: Spec, device: torch.device, extra: dict[str, str] | None) -> dict[str, str]:
    import torch

    return {
        TAG_SPEC_HASH: spec_hash(spec),
        TAG_VERSION: __version__,
        TAG_GIT: _git_commit(),
        TAG_DEVICE: torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        **(extra or {}),
    }


def _encode_data(spec: Spec, origin: str, inputs: _Inputs, workdir: Path) -> tuple[CaptionData, CaptionData]:
    """Both splits through the feature cache, unreadable images dropped and listed; the datasets logged."""
    import mlflow

    from capexp.backbones.feature_cache import encode_split
    from capexp.training.cross_entropy import CaptionData

    splits, batch = inputs.splits, spec.evaluation.batch_size
    start = time.perf_counter()
    train_split, train_enc = encode_split(inputs.card, splits.train, inputs.device, batch)
    val_split, val_enc = encode_split(inputs.card, splits.val, inputs.device, batch)
    skipped = train_enc.skipped + val_enc.skipped
    mlflow.set_tag(TAG_ENCODER_SKIPPED, str(len(skipped)))
    mlflow.log_metrics({"images_skipped": len(skipped), "images_encoded": train_enc.n_encoded + val_enc.n_encoded,
                        "images_cached": train_enc.n_cached + val_enc.n_cached,
                        "encode_minutes": (time.perf_counter() - start) / 60})  # cache reads included
    if skipped:
        with (workdir / "skipped_images.csv").open("w", newline="") as f:
            csv.writer(f).writerows([("image_id", "reason"), *skipped])
        mlflow.log_artifact(str(workdir / "skipped_images.csv"))
    if not train_split.images or not val_split.images:
        raise CapexpError(f"{origin}: no readable training or validation images remain; see skipped_images.csv.")
    splits.train, splits.val = train_split, val_split
    _log_inputs(splits, spec)
    train = CaptionData([im.image_id for im in train_split.images], train_enc.features, train_split.captions)
    val = CaptionData([im.image_id for im in val_split.images], val_enc.features, val_split.captions)
    return train, val


def _build(spec: Spec, inputs: _Inputs, references: list[list[str]]) -> tuple[ClipCap, Any, list[int] | None]:
    """The model and its tokenizer, cut to the training captions' tokens when `gpt2_config.vocabulary` is
    "train" (with the kept ids); the tokenizer's size is logged as a param."""
    import mlflow

    from capexp.model.captioner import build_captioner
    from capexp.model.vocabulary import training_vocabulary

    kept = training_vocabulary(inputs.decoder[1], references) if spec.gpt2_config.vocabulary == "train" else None
    model, tokenizer = build_captioner(spec, kept, card=inputs.card, decoder=inputs.decoder)
    if kept is not None:
        log.info("vocabulary cut to the %d tokens of the training captions", len(kept))
    mlflow.log_param(PARAM_VOCABULARY_SIZE, len(tokenizer))
    return model, tokenizer, kept


def _start_from(init: Checkpoint, model: ClipCap, kept: list[int] | None, origin: str) -> None:
    """Load `training_config.init_from`'s weights into `model`; tag the run with where they came from."""
    import mlflow

    from capexp.model.checkpoint import load_state

    if init.meta.vocabulary != kept:
        raise CapexpError(
            f"{origin}: `training_config.init_from` ({init.name}) kept a vocabulary of "
            f"{len(init.meta.vocabulary or [])} tokens, this run's training captions keep {len(kept or [])}: "
            f"its token ids would mean other words here. Start from a run trained on the same captions."
        )
    load_state(model, init.folder)
    mlflow.set_tags({TAG_INIT_FROM: str(init.folder)})
    log.info("starting from %s (epoch %s of run %s)", init.folder, init.meta.epoch, init.name)


class _Recorder:
    """After each epoch: log its metrics, keep the best checkpoint (trained weights only), write captions and curves."""

    def __init__(self, spec: Spec, origin: str, model: ClipCap, meta: CheckpointMeta, val: CaptionData, workdir: Path,
                 on_epoch: Callable[[int, dict[str, float]], bool | None] | None) -> None:
        from capexp.model.checkpoint import frozen_base

        self.metric, self.mode = spec.training_config.best_metric, spec.training_config.mode
        self.origin, self.model, self.meta, self.val, self.workdir, self.on_epoch = origin, model, meta, val, workdir, on_epoch
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {}
        self.minutes = 0.0  # the epochs' wall time so far (training and validation)
        self.frozen = frozen_base(model, spec.gpt2_config.model)  # frozen blocks stay out of the checkpoint

    def _improves(self, value: float) -> bool:
        if not self.best:
            return True
        old = self.best[f"best_{self.metric}"]
        return value < old if self.mode == "min" else value > old

    def __call__(self, result: EpochResult) -> bool:
        import mlflow

        from capexp.model.checkpoint import save_checkpoint

        metrics, metric, workdir = result.metrics, self.metric, self.workdir
        self.history.append(metrics)
        self.minutes += result.seconds / 60
        mlflow.log_metrics({**metrics, "epoch_seconds": result.seconds, METRIC_TRAIN_MINUTES: self.minutes}, step=result.epoch)
        if metric not in metrics:
            raise CapexpError(
                f"{self.origin}: `training_config.best_metric` is {metric!r}, which this run does not log. "
                f"Use one of: {', '.join(sorted(metrics))}."
            )
        if self._improves(metrics[metric]):
            self.best.update({f"best_{metric}": metrics[metric], "best_epoch": result.epoch})
            save_checkpoint(self.model, workdir / "checkpoint", replace(self.meta, epoch=result.epoch, metrics=metrics),
                            self.frozen)
        write_captions(workdir / "val_captions.csv", self.val.image_ids, result.captions, self.val.references)
        plot_curves(self.history, workdir / "curves.png")
        mlflow.log_artifact(str(workdir / "val_captions.csv"))
        mlflow.log_artifact(str(workdir / "curves.png"))
        return bool(self.on_epoch and self.on_epoch(result.epoch, metrics))


@stoppable
def run_spec(
    spec: Spec,
    *,
    origin: str = "spec",
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> RunResult:
    """Train the spec's captioner and track it as one MLflow run.

    `origin` names the spec in messages (its file); `params` are logged beside the spec's own.
    `on_epoch(epoch, metrics)` is called after each epoch's metrics are logged; returning True
    stops training early (a pruned trial), and the run ends FINISHED with the tag `capexp.pruned=true`. Ctrl-C, SIGTERM and SIGHUP end the
    run KILLED (see capexp.stopping).
    """
    import mlflow

    from capexp.model.checkpoint import CheckpointMeta
    from capexp.training.cross_entropy import train_cross_entropy

    inputs = _prepare(spec, origin, experiment, tracking_uri)  # everything that can fail on bad input
    active = mlflow.start_run(
        experiment_id=inputs.experiment_id, run_name=spec.id, parent_run_id=parent_run_id,
        tags=_run_tags(spec, inputs.device, tags), description=spec.notes or None, log_system_metrics=system_metrics(),
    )
    run_id = active.info.run_id
    workdir = Path(tempfile.mkdtemp(prefix="capexp-run-"))
    handler = _log_to_file(workdir / "run.log")
    best: dict[str, Any] = {}
    status = "FAILED"
    try:
        log.info("run %s (%s) in experiment %r, store %s", spec.id, run_id, experiment, mlflow.get_tracking_uri())
        _log_spec(spec, params, workdir)
        train, val = _encode_data(spec, origin, inputs, workdir)
        model, tokenizer, kept = _build(spec, inputs, train.references)
        if inputs.init:
            _start_from(inputs.init, model, kept, origin)
        meta = CheckpointMeta(__version__, spec, inputs.card.feature_dim, inputs.card.cache_id, kept)
        recorder = _Recorder(spec, origin, model, meta, val, workdir, on_epoch)
        best = recorder.best
        results = train_cross_entropy(model, tokenizer, train, val, spec, inputs.device, recorder)
        pruned = len(results) < spec.training_config.total_epochs
        if pruned:
            mlflow.set_tag(TAG_PRUNED, "true")
        status = "FINISHED"
        return RunResult(run_id, recorder.history, dict(best), pruned)
    except TrainingDiverged as e:
        raise TrainingDiverged(f"{origin}: run {spec.id} ends FAILED: {e}") from None
    except (KeyboardInterrupt, Exception) as e:
        if (stop := stopped_by(e)) is None:
            raise
        status = "KILLED"
        warn(f"interrupted ({str(stop) or 'SIGINT'}): run {spec.id} ends KILLED with everything logged so far kept.")
        raise stop from (None if stop is e else e)
    finally:
        _finish(spec, workdir, best, status, handler)


def _log_to_file(path: Path) -> logging.Handler:
    """capexp's log lines also go to `path` (the run's `run.log`) until the handler is removed."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler


def _log_spec(spec: Spec, params: dict[str, str] | None, workdir: Path) -> None:
    """The spec's values (dotted keys) and `params` as the run's params; the spec itself as `spec.json`."""
    import mlflow

    values = flatten(spec)
    if spec.clip_config.train_last_blocks:  # the rate the encoder blocks train at, default resolved
        values["training_config.encoder_learning_rate"] = spec.training_config.encoder_lr
    mlflow.log_params({k: param_value(v) for k, v in values.items() if k not in ("id", "notes")} | (params or {}))
    (workdir / "spec.json").write_text(spec.model_dump_json(indent=2))
    mlflow.log_artifact(str(workdir / "spec.json"))


def _finish(spec: Spec, workdir: Path, best: dict[str, Any], status: str, handler: logging.Handler) -> None:
    """Log what exists (best checkpoint as the run's model, best_* metrics, log file), copy to the
    seed's paths, end the run."""
    import mlflow

    try:
        if (workdir / "checkpoint").is_dir():
            _log_model(workdir / "checkpoint", best)
            _copy_to_seed_paths(spec, workdir)
        elif best:
            mlflow.log_metrics(best)
    finally:
        log.removeHandler(handler)
        handler.close()
        mlflow.log_artifact(str(workdir / "run.log"))
        mlflow.end_run(status)
        shutil.rmtree(workdir, ignore_errors=True)


def _log_model(checkpoint: Path, best: dict[str, Any]) -> None:
    """The best checkpoint as the run's logged model, with the best_* metrics on run and model.

    Should logging the model fail, the checkpoint is kept as the run's `checkpoint` artifact
    (which capexp reads too) and the reason is warned: tracked data is never lost.
    """
    import time

    import mlflow

    from capexp.serving.register import log_checkpoint_model

    run_id = mlflow.active_run().info.run_id
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    started = time.perf_counter()
    try:
        log_checkpoint_model(checkpoint, run_id, metrics=best,
                             tags={k: tags[k] for k in (TAG_STUDY, TAG_TRIAL) if k in tags})
    except Exception as e:  # noqa: BLE001 - any failure: keep the weights another way
        warn(f"run {run_id}: logging the best checkpoint as a model failed ({type(e).__name__}: {e}); "
             f"it is kept as the run's `{ARTIFACT_CHECKPOINT}` artifact instead.")
        mlflow.log_artifacts(str(checkpoint), artifact_path=ARTIFACT_CHECKPOINT)
        if best:
            mlflow.log_metrics(best)
        return
    mlflow.log_metric("model_log_seconds", time.perf_counter() - started)


def _copy_to_seed_paths(spec: Spec, workdir: Path) -> None:
    """The seed's `trained_model_path` / `monitoring_plots_path`, as safetensors + JSON (never pickle)."""
    cfg = spec.training_config
    if cfg.trained_model_path:
        target = expand_path(cfg.trained_model_path)
        if target.suffix == ".pkl":
            target = target.with_suffix("")
            log.info("trained_model_path names a pickle; capexp writes safetensors + JSON to %s/ instead", target)
        shutil.copytree(workdir / "checkpoint", target, dirs_exist_ok=True)
    if cfg.monitoring_plots_path and (workdir / "curves.png").exists():
        target = expand_path(cfg.monitoring_plots_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(workdir / "curves.png", target)
