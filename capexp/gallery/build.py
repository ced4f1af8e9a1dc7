"""The gallery's content: which models, which images, every caption and, with references, per-image scores;
and the scoring sheet `capexp score` reads back.

The images are a folder (every image Pillow reads in it) or a split (`train`, `val`, `test`) of
the first model's spec, whose references then give a per-image metric (BERTScore F1 or BLEU-4).
Captions come from `capexp.serving.folder.caption_refs` (one encoding per encoder, through the
feature cache). The sheet is `image_id, model_name, caption, score` with the scores blank, one
row per image and model; blind, each image's rows are shuffled (seeded) and `model_name` is the
run id, so a scorer cannot tell which model wrote what; `capexp score` resolves run ids.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capexp.errors import CapexpError, warn

if TYPE_CHECKING:
    from capexp.model.checkpoint import Checkpoint

__all__ = ["METRICS", "SPLITS", "Model", "Gallery", "build_gallery", "write_sheet"]

SPLITS = ("train", "val", "test")
METRICS = ("bertscore_f1", "bleu4")


@dataclass
class Model:
    name: str  # column title and the sheet's model_name (unique)
    run_id: str | None  # None for a checkpoint folder or a registered model
    checkpoint: Checkpoint


@dataclass
class Gallery:
    """Captions of the same images by several models, with references and per-image scores when known."""

    source: str  # the folder, or "the val split of the <data source> data" (names no model: blind pages show it)
    models: list[Model]
    images: list[Any]  # capexp.data.ImageRef, in row order
    captions: list[list[str]]  # [image][model]
    references: list[list[str]] | None  # [image] -> reference captions; None for a folder
    metric: str | None  # what `scores` hold
    scores: list[list[float]] | None  # [image][model]
    skipped: list[tuple[str, str]]

    def order(self, blind: bool, seed: int) -> list[list[int]]:
        """Per image, the models' order on a blind page and sheet: shuffled when `blind`, else as given."""
        rng = random.Random(seed)
        orders = []
        for _ in self.images:
            order = list(range(len(self.models)))
            if blind:
                rng.shuffle(order)
            orders.append(order)
        return orders


def _models(sources: list[str], experiment: str | None, tracking_uri: str | None) -> list[Model]:
    """Run ids, run names, checkpoint folders and `models:/` URIs to loadable checkpoints."""
    from capexp.model.checkpoint import read_checkpoint
    from capexp.serving.folder import unique_names
    from capexp.tracking import resolve_model_source

    found: list[tuple[str | None, Checkpoint]] = []
    for source in sources:
        where = resolve_model_source(source, experiment=experiment, tracking_uri=tracking_uri)
        found.append((where.run_id, read_checkpoint(where.folder, origin=where.origin)))
    names = unique_names([c for _, c in found])
    return [Model(name, run_id, checkpoint) for name, (run_id, checkpoint) in zip(names, found)]


def _images(source: str, first: Checkpoint, max_images: int | None) -> tuple[str, list[Any], list[list[str]] | None]:
    """(description, images, references or None) for a folder or a split of `first`'s spec."""
    from capexp.data import load_data
    from capexp.serving.folder import image_refs, list_images
    from capexp.data import check_inputs

    folder = Path(source)
    if folder.is_dir():
        refs = image_refs(list_images(folder))
        return str(folder), refs[:max_images], None
    if source not in SPLITS:
        raise CapexpError(
            f"{source!r} is neither a folder nor a split. Pass a folder of images, or one of "
            f"{', '.join(SPLITS)} to caption that split of the first run's data (its spec says where it is)."
        )
    spec = first.spec
    origin = f"the {source} split of run {first.name!r}"
    check_inputs(spec, origin)
    split = getattr(load_data(spec), source)
    if split is None:
        raise CapexpError(
            f"{origin}: its data source ({spec.data_paths.source}) has no test split. Pass val, or a folder of images."
        )
    keep = len(split.images) if max_images is None else min(max_images, len(split.images))
    return f"the {source} split of the {spec.data_paths.source} data", split.images[:keep], split.captions[:keep]


def _score(metric: str, captions: list[list[str]], references: list[list[str]], first: Checkpoint,
           device: str | None) -> list[list[float]]:
    """[image][model] per-image `metric` of every caption against its image's references."""
    from capexp.evaluation.metrics import bertscore_per_caption, bleu4_per_caption

    n_models = len(captions[0]) if captions else 0
    flat = [c for row in captions for c in row]
    refs = [r for r, row in zip(references, captions) for _ in row]
    if metric == "bleu4":
        values = bleu4_per_caption(flat, refs)
    else:
        ev = first.spec.evaluation
        values = [f for _, _, f in bertscore_per_caption(flat, refs, model=ev.bertscore_model,
                                                         num_layers=ev.bertscore_num_layers, device=device or "cpu",
                                                         batch_size=ev.batch_size)]
    return [values[i : i + n_models] for i in range(0, len(values), n_models)]


def build_gallery(
    images: str | Path,
    sources: list[str],
    *,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    metric: str = "bertscore_f1",
    max_images: int | None = 100,
    beam: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
) -> Gallery:
    """Caption `images` (a folder, or `train`/`val`/`test` of the first model's spec; at most
    `max_images`) with every model `sources` names (run ids or names, checkpoint folders,
    `models:/NAME@alias`); score each caption by `metric` when the images have references."""
    from capexp.serving.folder import caption_refs

    if metric not in METRICS:
        raise CapexpError(f"--metric {metric!r}: use one of {', '.join(METRICS)}.")
    if not sources:
        raise CapexpError("capexp gallery needs models: give --run ID (twice or more to compare), --model URI, "
                          "or --experiment NAME.")
    models = _models([str(s) for s in sources], experiment, tracking_uri)
    description, refs, references = _images(str(images), models[0].checkpoint, max_images)
    data_ids = {m.checkpoint.spec.data_paths.model_dump_json() for m in models}
    if references is not None and len(data_ids) > 1:
        warn(f"the models were trained on different data; the {images} split is the first run's ({models[0].name}).")
    made = caption_refs(refs, [m.checkpoint for m in models], beam=beam, batch_size=batch_size, device=device)
    if not made.images:
        raise CapexpError(f"none of the images of {description} could be read; nothing to show.")
    kept = {ref.key: i for i, ref in enumerate(refs)}
    if references is not None:
        references = [references[kept[ref.key]] for ref in made.images]
    captions = [[made.captions[m][i] for m in range(len(models))] for i in range(len(made.images))]
    scores = None
    if references is not None:
        scores = _score(metric, captions, references, models[0].checkpoint, device)
    return Gallery(description, models, made.images, captions, references, metric if scores else None, scores,
                   made.skipped)


def write_sheet(gallery: Gallery, path: Path, *, blind: bool = False, seed: int = 0) -> Path:
    """The scoring sheet `capexp score` reads: `image_id, model_name, caption, score` (score blank).

    Blind: each image's rows in a shuffled order and `model_name` the run id (a checkpoint
    folder or registered model has none: an error)."""
    from capexp.evaluation.human_scores import COLUMNS

    if blind:
        untracked = [m.name for m in gallery.models if m.run_id is None]
        if untracked:
            raise CapexpError(
                f"--blind writes run ids as model_name, and {', '.join(untracked)} is not a tracked run "
                f"(a checkpoint folder or a registered model). Pass those models as --run RUN, or drop --blind."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for ref, captions, order in zip(gallery.images, gallery.captions, gallery.order(blind, seed)):
            for m in order:
                model = gallery.models[m]
                w.writerow([ref.image_id, model.run_id if blind else model.name, captions[m], ""])
    return path
