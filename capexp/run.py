"""Where a spec becomes a run: data, features, model and training, all recorded in MLflow.

`run_spec` is the main job behind `capexp run` and every study trial. Bad input fails before
an MLflow run exists; once one exists, a crash or Ctrl-C ends it FAILED or KILLED with the
metrics, the best checkpoint so far, the curves and the log kept.
"""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capexp import __version__
from capexp.errors import CapexpError, TrainingDiverged, warn
from capexp.spec import Spec, expand_path, flatten, missing_paths, spec_hash
from capexp.tracking import (
    DEFAULT_EXPERIMENT,
    TAG_DEVICE,
    TAG_ENCODER_SKIPPED,
    TAG_GIT,
    TAG_PRUNED,
    TAG_SPEC_HASH,
    TAG_VERSION,
    experiment_id,
    param_value,
    use_store,
)

__all__ = ["RunResult", "run_spec", "check_inputs", "encode_split", "write_captions"]

log = logging.getLogger("capexp")


@dataclass
class RunResult:
    run_id: str
    status: str  # FINISHED, or FINISHED with pruned=True when on_epoch stopped it
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


def check_inputs(spec: Spec, origin: str) -> None:
    missing = missing_paths(spec)
    if missing:
        named = "; ".join(f"`{key}` = {path}" for key, path in missing)
        raise CapexpError(
            f"{origin}: data not found: {named}. Fix the path in the spec, or override it with "
            f"--set (for example --set data_paths.root=/path/to/flickr8k), or set CAPEXP_DATA."
        )
    from capexp.checks import check_spec

    check_spec(spec, origin)


def _plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss curves on the left, caption metrics on the right, one point per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(1, len(history) + 1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("train_loss", "val_loss"):
        left.plot(epochs, [h[name] for h in history], marker="o", label=name)
    left.set(xlabel="epoch", ylabel="loss", title="Loss")
    for name in ("bertscore_precision", "bertscore_recall", "bertscore_f1", "bleu4", "meteor", "cider"):
        if all(name in h for h in history):
            right.plot(epochs, [h[name] for h in history], marker="o", label=name)
    right.set(xlabel="epoch", title="Validation caption metrics")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_captions(path: Path, image_ids: list[str], captions: list[str], references: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "caption", "references"])
        for image_id, caption, refs in zip(image_ids, captions, references):
            w.writerow([image_id, caption, " | ".join(refs)])


def encode_split(card, split, device, batch_size: int):
    """Features of a split's images through the feature cache, and the split without unreadable images."""
    from capexp.features import encode_images

    enc = encode_images(card, split.images, device=device, batch_size=batch_size)
    if enc.skipped:
        split = split.drop(set(range(len(split.images))) - set(enc.kept))
    return split, enc


def _log_inputs(splits, spec: Spec) -> None:
    import mlflow

    from capexp.datasets import dataset_frame

    for context, split in (("training", splits.train), ("validation", splits.val)):
        frame = dataset_frame(split)
        name = f"{spec.data_paths.source}-{context}"
        dataset = mlflow.data.from_pandas(frame, name=name)
        try:
            mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException:  # another worker logged the same dataset just now
            mlflow.log_input(dataset, context=context)


def run_spec(
    spec: Spec,
    *,
    origin: str = "spec",
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> RunResult:
    """Train the spec's captioner and track it as one MLflow run.

    `origin` names the spec in messages (its file). `on_epoch(epoch, metrics)` is called after
    each epoch's metrics are logged; returning True stops training early (a pruned trial), and
    the run ends FINISHED with the tag `capexp.pruned=true`.
    """
    import mlflow
    import torch

    from capexp.backbones import decoder_blocks, load_decoder, resolve_encoder
    from capexp.checks import check_decoder_fit
    from capexp.datasets import load_data
    from capexp.model import save_checkpoint
    from capexp.train import CaptionData, build_model, fit, pick_device
    from capexp.vocabulary import restrict_vocabulary, training_vocabulary

    # Everything that can fail on bad input happens before a run exists.
    check_inputs(spec, origin)
    use_store(tracking_uri)
    exp_id = experiment_id(experiment)
    splits = load_data(spec)
    card = resolve_encoder(spec.clip_config.model, spec.clip_config.image_size, spec.clip_config.features)
    torch.manual_seed(spec.seed)
    decoder, tokenizer = load_decoder(spec.gpt2_config.model, spec.gpt2_config.tokenizer)
    blocks = decoder_blocks(decoder)
    freeze = spec.gpt2_config.n_layers_to_freeze
    if freeze is not None and freeze > len(blocks):
        raise CapexpError(
            f"{origin}: `gpt2_config.n_layers_to_freeze` is {freeze} but {spec.gpt2_config.model} has "
            f"{len(blocks)} blocks. Use a value from 0 to {len(blocks)}."
        )
    check_decoder_fit(spec, origin, decoder.config.to_dict())  # a hub id validate could not see
    device = pick_device(spec.training_config.enable_GPU)

    run_tags = {
        TAG_SPEC_HASH: spec_hash(spec),
        TAG_VERSION: __version__,
        TAG_GIT: _git_commit(),
        TAG_DEVICE: torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        **(tags or {}),
    }
    active = mlflow.start_run(
        experiment_id=exp_id, run_name=spec.id, parent_run_id=parent_run_id,
        tags=run_tags, description=spec.notes or None,
    )
    run_id = active.info.run_id
    workdir = Path(tempfile.mkdtemp(prefix="capexp-run-"))
    handler = logging.FileHandler(workdir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {}
    status = "FAILED"
    try:
        log.info("run %s (%s) in experiment %r, store %s", spec.id, run_id, experiment, mlflow.get_tracking_uri())
        mlflow.log_params({k: param_value(v) for k, v in flatten(spec).items() if k not in ("id", "notes")})
        (workdir / "spec.json").write_text(spec.model_dump_json(indent=2))
        mlflow.log_artifact(str(workdir / "spec.json"))

        train_split, train_enc = encode_split(card, splits.train, device, spec.evaluation.batch_size)
        val_split, val_enc = encode_split(card, splits.val, device, spec.evaluation.batch_size)
        skipped = train_enc.skipped + val_enc.skipped
        mlflow.set_tag(TAG_ENCODER_SKIPPED, str(len(skipped)))
        mlflow.log_metrics({"images_skipped": len(skipped), "images_encoded": train_enc.n_encoded + val_enc.n_encoded,
                            "images_cached": train_enc.n_cached + val_enc.n_cached})
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
        kept = None
        if spec.gpt2_config.vocabulary == "train":
            kept = training_vocabulary(tokenizer, train_split.captions)
            tokenizer = restrict_vocabulary(decoder, tokenizer, kept)
            log.info("vocabulary cut to the %d tokens of the training captions", len(kept))
        mlflow.log_param("vocabulary_size", len(tokenizer))
        model = build_model(spec, decoder, blocks, card.feature_dim)
        metric, mode = spec.training_config.best_metric, spec.training_config.mode
        checkpoint = workdir / "checkpoint"
        meta_base = {"capexp_version": __version__, "spec": spec.model_dump(mode="json"),
                     "feature_dim": card.feature_dim, "encoder_cache_id": card.cache_id, "vocabulary": kept}

        def after_epoch(result) -> bool:
            metrics = result.metrics
            history.append(metrics)
            mlflow.log_metrics({**metrics, "epoch_seconds": result.seconds}, step=result.epoch)
            if metric not in metrics:
                raise CapexpError(
                    f"{origin}: `training_config.best_metric` is {metric!r}, which this run does not log. "
                    f"Use one of: {', '.join(sorted(metrics))}."
                )
            value = metrics[metric]
            if not best or (value < best[f"best_{metric}"] if mode == "min" else value > best[f"best_{metric}"]):
                best.update({f"best_{metric}": value, "best_epoch": result.epoch})
                save_checkpoint(model, checkpoint, {**meta_base, "epoch": result.epoch, "metrics": metrics})
            write_captions(workdir / "val_captions.csv", val.image_ids, result.captions, val.references)
            _plot_curves(history, workdir / "curves.png")
            mlflow.log_artifact(str(workdir / "val_captions.csv"))
            mlflow.log_artifact(str(workdir / "curves.png"))
            return bool(on_epoch and on_epoch(result.epoch, metrics))

        results = fit(model, tokenizer, train, val, spec, device, after_epoch)
        pruned = len(results) < spec.training_config.num_epochs
        if pruned:
            mlflow.set_tag(TAG_PRUNED, "true")
        status = "FINISHED"
        return RunResult(run_id, status, history, dict(best), pruned)
    except TrainingDiverged as e:
        raise TrainingDiverged(f"{origin}: run {spec.id} ends FAILED: {e}") from None
    except KeyboardInterrupt:
        status = "KILLED"
        warn(f"interrupted: run {spec.id} ends KILLED with everything logged so far kept.")
        raise
    finally:
        _finish(spec, workdir, best, status, handler)


def _finish(spec: Spec, workdir: Path, best: dict[str, Any], status: str, handler: logging.Handler) -> None:
    """Log what exists (best checkpoint, log file), copy to the seed's paths, end the run."""
    import mlflow

    try:
        if best:
            mlflow.log_metrics(best)
        if (workdir / "checkpoint").is_dir():
            mlflow.log_artifacts(str(workdir / "checkpoint"), artifact_path="checkpoint")
            _copy_to_seed_paths(spec, workdir)
    finally:
        log.removeHandler(handler)
        handler.close()
        mlflow.log_artifact(str(workdir / "run.log"))
        mlflow.end_run(status)
        shutil.rmtree(workdir, ignore_errors=True)


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
