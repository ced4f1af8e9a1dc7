"""`capexp evaluate`: a tracked run's best checkpoint, scored on a held-out split, logged back to that run.

The run's spec (kept in its checkpoint) rebuilds the data; the split is encoded through the
feature cache, captioned by the shared decoder (`capexp.model.decoding`, as the spec's `evaluation`
section says unless overridden) and scored against all references with `score_captions`.
The scores land on the run as `<split>_<metric>` (test_bleu4, test_cider, test_bertscore_f1,
...) even when it has ended, beside `evaluation/<split>_captions.csv` and the per-image record that
`capexp compare --significance` resamples (`evaluation/<split>_per_image.json`). Several runs can be
scored as one ensemble; its scores go to a run of its own, tagged with its members.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from capexp.errors import CapexpError

if TYPE_CHECKING:
    from capexp.data import Split, Splits
    from capexp.model.decoding import DecodeOptions
    from capexp.spec.schema import Spec

__all__ = ["evaluate_run"]

log = logging.getLogger("capexp")

def _pick_split(splits: Splits, split: str, origin: str, source: str) -> Split:
    if split == "val":
        return splits.val
    if splits.test is None:
        raise CapexpError(
            f"{origin}: its data source ({source}) has no test split, so there is nothing held out to "
            f"report on. Evaluate its validation split with --split val, or train on a source with a "
            f"test split (flickr8k)."
        )
    return splits.test


def evaluate_run(
    run: str,
    *,
    split: Literal["test", "val"] = "test",
    beam: int | None = None,
    length_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    ensemble: Sequence[str] = (),
    experiment: str | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """Caption `split` with run `run`'s best checkpoint, log `<split>_<metric>` to the run, return them.

    `run` is a run id or name (the latest of that name with a checkpoint, in `experiment` when
    given). Decoding follows the run's `evaluation` section; `beam`, `length_penalty` and
    `no_repeat_ngram_size` override it, and the decoding used is tagged `capexp.<split>_decoding`.
    `ensemble` names other runs (ids or names) that decode with `run` as one model: the mean of their
    next-token probabilities at each step. They must share its encoder and token vocabulary. An
    ensemble's scores go to its own run, named after its members and tagged `capexp.ensemble` with
    their ids (created on first use, in `run`'s experiment), not to any member.
    Writes `evaluation/<split>_captions.csv` (image_id, caption, references joined by " | ") as an
    artifact, beside the training's own `val_captions.csv`, which stays as it was. Metrics are
    logged again (a new value) by each call. `device` None: CUDA when
    available, else CPU.
    """
    from capexp.backbones.feature_cache import encode_split
    from capexp.data import check_inputs, load_data
    from capexp.evaluation.metrics import score_captions
    from capexp.evaluation.significance import log_per_image
    from capexp.model.checkpoint import check_ensemble, read_checkpoint
    from capexp.model.decoding import decode
    from capexp.tracking import resolve_model_source

    if split not in ("test", "val"):
        raise CapexpError(f"--split must be 'test' or 'val', got {split!r}.")
    sources = [resolve_model_source(s, experiment=experiment, tracking_uri=tracking_uri) for s in (run, *ensemble)]
    member_ids = [s.tracked_run("capexp evaluate") for s in sources]
    checkpoints = [read_checkpoint(s.folder, origin=s.origin) for s in sources]
    check_ensemble(checkpoints)
    members = [c.load(device) for c in checkpoints]
    captioner, origin = members[0], f"run {run!r}"
    spec, options = _decoding(captioner.spec, beam=beam, length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
    ev = spec.evaluation
    check_inputs(spec, origin)
    data = _pick_split(load_data(spec), split, origin, spec.data_paths.source)
    started = time.perf_counter()
    data, enc = encode_split(captioner.card, data, captioner.device, ev.batch_size)
    if not data.images:
        raise CapexpError(f"{origin}: none of the {split} images could be read; nothing to evaluate.")
    captions = decode([m.model for m in members], captioner.tokenizer, enc.features, options, batch_size=ev.batch_size, device=captioner.device)
    scores, per_caption = score_captions(captions, data.captions, ev, device=str(captioner.device))
    metrics = {f"{split}_{name}": value for name, value in scores.items()} | {f"{split}_images": float(len(captions))}
    name = "+".join(m.name for m in members)
    log.info("%s on %s (%d images, %s, %.0fs): %s", name, split, len(captions), options.describe(),
             time.perf_counter() - started, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    target, ids = _ensemble_run(member_ids, name) if ensemble else member_ids[0], [im.image_id for im in data.images]
    _log_to_run(target, split, metrics, options, ids, captions, data.captions)
    log_per_image(target, split, options.describe(), ids, captions, data.captions, per_caption, ev)
    return metrics


def _decoding(spec: Spec, **overrides: float | None) -> tuple[Spec, DecodeOptions]:
    """The spec with its `evaluation` decoding keys overridden where `overrides` are not None (`beam` sets
    `beam_size`), and the decoding it gives."""
    from capexp.model.decoding import DecodeOptions

    updates = {("beam_size" if k == "beam" else k): v for k, v in overrides.items() if v is not None}
    ev = spec.evaluation.model_copy(update=updates)
    ev = type(ev).model_validate(ev.model_dump())  # a bad override (beam 0) fails here, with pydantic's message
    spec = spec.model_copy(update={"evaluation": ev})
    return spec, DecodeOptions.from_spec(spec)


def _ensemble_run(member_ids: list[str], name: str) -> str:
    """The run that holds the ensemble of `member_ids`' scores: found by its tag, else created (ended) in the
    first member's experiment."""
    from mlflow import MlflowClient

    from capexp.tracking import TAG_ENSEMBLE, TAG_NOTE, tagged_run

    client = MlflowClient()
    key = ",".join(member_ids)
    experiment_id = client.get_run(member_ids[0]).info.experiment_id
    found = tagged_run(experiment_id, TAG_ENSEMBLE, key)
    if found is not None:
        return found
    note = f"Ensemble (mean next-token probabilities) of the runs in tag {TAG_ENSEMBLE}."
    run = client.create_run(experiment_id, run_name=name, tags={TAG_ENSEMBLE: key, TAG_NOTE: note})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _log_to_run(run_id: str, split: str, metrics: dict[str, float], options: DecodeOptions, image_ids: list[str],
                captions: list[str], references: list[list[str]]) -> None:
    """The scores as new metric values (of the run and its model), the decoding as a tag, the captions
    beside the training's files."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from capexp.training.outputs import write_captions
    from capexp.tracking import TAG_EVAL_DECODING, run_model

    client = MlflowClient()
    now = int(time.time() * 1000)
    model = run_model(run_id)  # the scores are the model's too (the UI's "Logged models" shows them)
    model_id = model.model_id if model is not None else None
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0, model_id=model_id) for k, v in metrics.items()])
    client.set_tag(run_id, TAG_EVAL_DECODING.format(split=split), options.describe())
    with tempfile.TemporaryDirectory(prefix="capexp-eval-") as tmp:
        path = Path(tmp) / f"{split}_captions.csv"
        write_captions(path, image_ids, captions, references)
        client.log_artifact(run_id, str(path), artifact_path="evaluation")  # beside, not over, training's files
