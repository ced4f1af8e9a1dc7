"""How sure a comparison is: a paired bootstrap over the images that `capexp evaluate` scored.

`capexp evaluate` logs, beside its scores, each image's caption, references, METEOR and BERTScore
F1 (`log_per_image`, the artifact `evaluation/<split>_per_image.json`). From those, without
decoding again, `per_image` keeps what each metric needs per image: BLEU-4's n-gram counts
(pycocoevalcap's clipped matches and totals per n, the caption's length and its closest
reference's, so a resample's corpus BLEU-4 comes from summed counts), CIDEr-D per image with
document frequencies fixed from the whole split's references (a resample's CIDEr is the mean of
its images'), METEOR and BERTScore F1 as scored. `bootstrap` resamples the images, the same
resamples for every run, and gives each run's value and its difference from the first run with a
95% percentile interval. Text is tokenized by `ptb_words`, which matches the Java PTB tokenizer
`capexp evaluate` scores with.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from capexp.errors import CapexpError
from capexp.evaluation.cider import CiderD, ptb_words
from capexp.tracking.names import ARTIFACT_EVAL_PER_IMAGE

if TYPE_CHECKING:
    from capexp.spec.schema import EvaluationConfig

__all__ = ["METRICS", "RESAMPLES", "SEED", "Scored", "PerImage", "Difference", "log_per_image", "read_scored",
           "paired", "statistics",
           "per_image", "corpus_bleu4", "statistic", "bootstrap"]

METRICS = {"bleu4": "BLEU-4", "meteor": "METEOR mean", "cider": "CIDEr", "bertscore_f1": "BERTScore F1"}
RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Scored:
    """One run's logged evaluation of one split: what the artifact holds."""

    split: str
    decoding: str
    bertscore_model: str
    image_ids: list[str]
    captions: list[str]
    references: list[list[str]]
    meteor: list[float] | None  # None: METEOR was not computed (no Java, or `evaluation.coco_metrics` off)
    bertscore_f1: list[float]


@dataclass(frozen=True)
class PerImage:
    """One run's per-image statistics, one row per image."""

    bleu: np.ndarray  # (N, 10): caption length, closest reference length, n-grams n=1..4, clipped matches n=1..4
    scores: dict[str, np.ndarray]  # cider, bertscore_f1 and (when scored) meteor: (N,) each

    def __len__(self) -> int:
        return len(self.bleu)


@dataclass(frozen=True)
class Difference:
    """A run's value of a metric on all images, and its difference from the first run's with a bootstrap interval."""

    metric: str
    run: int
    value: float
    difference: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0


def log_per_image(run_id: str, split: str, decoding: str, image_ids: list[str], captions: list[str],
                  references: list[list[str]], per_caption: dict[str, list[float]], ev: EvaluationConfig) -> None:
    """Log each caption's BERTScore F1 and METEOR (`score_captions`' per-caption scores; METEOR null when it was
    not scored), with the captions and references, as the run's artifact `evaluation/<split>_per_image.json`."""
    from mlflow import MlflowClient

    meteor, bertscore = per_caption.get("meteor"), per_caption["bertscore_f1"]
    model = ev.bertscore_model + (f" (layer {ev.bertscore_num_layers})" if ev.bertscore_num_layers else "")
    images = [{"image_id": i, "caption": c, "references": r, "meteor": None if meteor is None else meteor[k],
               "bertscore_f1": bertscore[k]} for k, (i, c, r) in enumerate(zip(image_ids, captions, references))]
    record = {"split": split, "decoding": decoding, "bertscore_model": model, "images": images}
    artifact = Path(ARTIFACT_EVAL_PER_IMAGE.format(split=split))
    with tempfile.TemporaryDirectory(prefix="capexp-eval-") as tmp:
        path = Path(tmp) / artifact.name
        path.write_text(json.dumps(record, indent=1), encoding="utf-8")
        MlflowClient().log_artifact(run_id, str(path), artifact_path=str(artifact.parent))


def read_scored(text: str) -> Scored:
    """A `Scored` from the artifact's JSON text."""
    record: dict[str, Any] = json.loads(text)
    images = record["images"]
    meteor = [im["meteor"] for im in images]
    return Scored(split=record["split"], decoding=record["decoding"], bertscore_model=record["bertscore_model"],
                  image_ids=[str(im["image_id"]) for im in images], captions=[im["caption"] for im in images],
                  references=[list(im["references"]) for im in images],
                  meteor=None if None in meteor else [float(m) for m in meteor],
                  bertscore_f1=[float(im["bertscore_f1"]) for im in images])


def _bleu_counts(caption: list[str], references: list[list[str]]) -> list[float]:
    """pycocoevalcap's BLEU statistics of one caption: its length, the closest reference length, then the
    n-grams and clipped matches for n = 1..4."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    cooked = cook_test(" ".join(caption), cook_refs([" ".join(r) for r in references]), eff="closest")
    return [cooked["testlen"], cooked["reflen"], *cooked["guess"], *cooked["correct"]]


def per_image(captions: Sequence[Sequence[str]], references: Sequence[Sequence[str]], cider: CiderD,
              meteor: Sequence[float] | None, bertscore_f1: Sequence[float]) -> PerImage:
    """The per-image statistics of tokenized `captions` against tokenized `references` (one list per image);
    `cider` holds the same references, so its document frequencies come from the whole split."""
    bleu = np.array([_bleu_counts(list(c), [list(r) for r in refs]) for c, refs in zip(captions, references)], float)
    scores = {"cider": np.array(cider.scores(captions, range(len(captions)))),
              "bertscore_f1": np.asarray(bertscore_f1, float)}
    if meteor is not None:
        scores["meteor"] = np.asarray(meteor, float)
    return PerImage(bleu=bleu.reshape(len(captions), 10), scores=scores)


def corpus_bleu4(counts: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 (pycocoevalcap's, brevity penalty on the closest reference lengths) from summed statistics
    (..., 10) as `PerImage.bleu` lays them out."""
    test, ref, guess, correct = counts[..., 0], counts[..., 1], counts[..., 2:6], counts[..., 6:10]
    precision = np.prod((correct + 1e-15) / (guess + 1e-9), axis=-1) ** 0.25
    ratio = (test + 1e-15) / (ref + 1e-9)
    with np.errstate(over="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return precision * penalty


def statistic(stats: PerImage, metric: str, weights: np.ndarray) -> np.ndarray:
    """`metric` on each resample: `weights` (B, N) counts how often each image is drawn."""
    if metric == "bleu4":
        return corpus_bleu4(weights @ stats.bleu)
    return weights @ stats.scores[metric] / weights.sum(axis=1)


def bootstrap(runs: Sequence[PerImage], *, resamples: int = RESAMPLES, seed: int = SEED) -> list[Difference]:
    """Each metric every run has: each run's value and its difference from `runs[0]`'s, with a 95% percentile
    interval over `resamples` paired resamples of the images (the same draws for every run)."""
    n = len(runs[0])
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
    everything = np.ones((1, n))
    tail = 100 * (1 - LEVEL) / 2
    out = []
    for metric in METRICS:
        if metric != "bleu4" and any(metric not in run.scores for run in runs):
            continue
        first, first_samples = statistic(runs[0], metric, everything)[0], statistic(runs[0], metric, weights)
        for k, run in enumerate(runs):
            value = statistic(run, metric, everything)[0]
            low, high = np.percentile(statistic(run, metric, weights) - first_samples, [tail, 100 - tail])
            out.append(Difference(metric, k, float(value), float(value - first), float(low), float(high)))
    return out


def statistics(scored: Sequence[Scored]) -> list[PerImage]:
    """Each run's per-image statistics, for runs scored on the same images and references (`paired`)."""
    references = [[ptb_words(r) for r in refs] for refs in scored[0].references]
    cider = CiderD(references)
    return [per_image([ptb_words(c) for c in s.captions], references, cider, s.meteor, s.bertscore_f1) for s in scored]


def paired(names: Sequence[str], scored: Sequence[Scored]) -> list[Scored]:
    """`scored` with every run's images in the first run's order; a CapexpError saying what differs where a run
    was scored on other images or references, with other decoding or another BERTScore model."""
    first, out = scored[0], [scored[0]]
    pair = f"runs {names[0]!r} and"
    for name, s in zip(names[1:], scored[1:]):
        if s.decoding != first.decoding:
            raise CapexpError(f"{pair} {name!r} were evaluated with different decoding ({first.decoding} against "
                              f"{s.decoding}), so their scores do not compare: evaluate both with the same --beam, "
                              f"--length-penalty and --no-repeat-ngram-size.")
        position = {image: k for k, image in enumerate(s.image_ids)}
        if len(position) != len(s.image_ids) or position.keys() != set(first.image_ids):
            apart = len(position.keys() ^ set(first.image_ids))
            raise CapexpError(f"{pair} {name!r} were scored on different {first.split} images ({len(first.image_ids)} "
                              f"and {len(s.image_ids)}, {apart} not in both), so no paired comparison exists: "
                              f"evaluate both on the same data (the spec's data_paths) with `capexp evaluate`.")
        rows = [position[image] for image in first.image_ids]
        if [s.references[k] for k in rows] != first.references:
            raise CapexpError(f"{pair} {name!r} were scored against different references for the same "
                              f"{first.split} images: evaluate both on the same data (the spec's data_paths).")
        if s.bertscore_model != first.bertscore_model:
            raise CapexpError(f"{pair} {name!r} were scored with different BERTScore models ({first.bertscore_model} "
                              f"against {s.bertscore_model}): evaluate both with the same evaluation.bertscore_model.")
        out.append(Scored(s.split, s.decoding, s.bertscore_model, list(first.image_ids), [s.captions[k] for k in rows],
                          first.references, None if s.meteor is None else [s.meteor[k] for k in rows],
                          [s.bertscore_f1[k] for k in rows]))
    return out
