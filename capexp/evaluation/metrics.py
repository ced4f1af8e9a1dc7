"""Caption metrics: BERTScore always, and the COCO caption metrics when Java is present.

Every prediction is scored against all the references of its image. The COCO metrics are
pycocoevalcap's (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D reported as `cider`) on text tokenized by its
Stanford PTB tokenizer, so they compare with published numbers; they are fractions as
pycocoevalcap returns them (BLEU-4 0.213 is the 21.3 papers print). SPICE is never computed: it
downloads Stanford CoreNLP models on first use, which cannot happen offline.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capexp.errors import CapexpError, warn

if TYPE_CHECKING:
    from capexp.spec.schema import EvaluationConfig

__all__ = ["bertscore", "bertscore_per_caption", "bleu4_per_caption", "coco_metrics", "java_available", "caption_metrics",
           "score_captions"]

log = logging.getLogger("capexp")


def _check(predictions: list[str], references: list[list[str]]) -> None:
    if not predictions:
        raise ValueError("no predictions to score")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists; give one list per prediction")
    if not all(references):
        raise ValueError("every prediction needs at least one reference; an image has none")


# ---------------------------------------------------------------------------- BERTScore
@functools.lru_cache(maxsize=4)
def _scorer(model_type: str, num_layers: int | None, device: str) -> Any:
    """A loaded bert-score model, kept for the process so per-epoch scoring does not reload it."""
    import bert_score
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return bert_score.BERTScorer(model_type=model_type, num_layers=num_layers, device=device)
    except (OSError, KeyError) as e:
        raise CapexpError(
            f"`evaluation.bertscore_model` {model_type!r} could not be loaded ({type(e).__name__}: {e}). Use "
            f"all-MiniLM-L6-v2 (ships offline), a local model folder, or a hub id such as roberta-large when "
            f"online; for a model bert-score does not know, also set `evaluation.bertscore_num_layers`."
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def bertscore(predictions: list[str], references: list[list[str]], **options: Any) -> dict[str, float]:
    """Mean BERTScore P/R/F1, each prediction against its best reference, without baseline rescaling.

    `options` are `bertscore_per_caption`'s (`model`, `num_layers`, `device`, `batch_size`).
    An empty prediction scores 0.
    """
    return _bertscore_means(bertscore_per_caption(predictions, references, **options))


def _bertscore_means(rows: list[tuple[float, float, float]]) -> dict[str, float]:
    return {name: sum(row[k] for row in rows) / len(rows)
            for k, name in enumerate(("bertscore_precision", "bertscore_recall", "bertscore_f1"))}


def bertscore_per_caption(
    predictions: list[str],
    references: list[list[str]],
    *,
    model: str = "all-MiniLM-L6-v2",
    num_layers: int | None = None,
    device: str = "cpu",
    batch_size: int = 64,
) -> list[tuple[float, float, float]]:
    """BERTScore (P, R, F1) of each prediction against its best reference; (0, 0, 0) for an empty one.

    `model` is a name resolved by `capexp.backbones.resolve_bertscore_model` (the offline
    default all-MiniLM-L6-v2, a local folder or a hub id); `num_layers` overrides its layer.
    """
    from capexp.backbones import resolve_bertscore_model

    _check(predictions, references)
    model_type, default_layers = resolve_bertscore_model(model)
    scorer = _scorer(model_type, num_layers or default_layers, str(device))
    # bert-score cannot encode an empty caption with transformers 5 tokenizers: score the others only
    scored = [i for i, prediction in enumerate(predictions) if prediction.strip()]
    if len(scored) < len(predictions):
        log.info("%d of %d captions are empty; BERTScore counts them as 0", len(predictions) - len(scored), len(predictions))
    rows = [(0.0, 0.0, 0.0)] * len(predictions)
    if scored:
        p, r, f = scorer.score([predictions[i] for i in scored], [references[i] for i in scored], batch_size=batch_size)
        for j, i in enumerate(scored):
            rows[i] = (p[j].item(), r[j].item(), f[j].item())
    return rows


def bleu4_per_caption(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Sentence BLEU-4 of each prediction against all its references: pycocoevalcap's BLEU on the PTB
    tokenization `coco_metrics` uses, done in Python (`capexp.evaluation.cider.ptb_words`: no Java needed);
    0 for an empty prediction."""
    from pycocoevalcap.bleu.bleu import Bleu

    from capexp.evaluation.cider import ptb_words

    _check(predictions, references)

    def words(text: str) -> str:
        return " ".join(ptb_words(text))

    scored = [i for i, prediction in enumerate(predictions) if words(prediction)]
    out = [0.0] * len(predictions)
    if scored:
        res = {i: [words(predictions[i])] for i in scored}
        gts = {i: [words(r) for r in references[i]] for i in scored}
        _, per_image = Bleu(4).compute_score(gts, res, verbose=0)
        for i, value in zip(scored, per_image[3]):
            out[i] = float(value)
    return out


# ---------------------------------------------------------------------------- COCO metrics
def java_available() -> bool:
    """Whether a `java` executable is on PATH (the PTB tokenizer and METEOR are Java programs)."""
    return shutil.which("java") is not None


@functools.lru_cache(maxsize=1)
def _warn_no_java() -> None:
    warn(
        "`java` is not on PATH, so BLEU, METEOR, ROUGE-L and CIDEr are not computed (only BERTScore). Install a "
        "Java runtime (for example `apt-get install default-jre-headless`) or set `evaluation.coco_metrics` to false."
    )


@functools.lru_cache(maxsize=1)
def _note_no_spice() -> None:
    log.info("SPICE is not computed: it downloads Stanford CoreNLP models on first use, which cannot run offline")


def _ptb_tokenize(sentences: list[str]) -> list[str]:
    """pycocoevalcap's PTB tokenization (same jar, options and punctuation removal), one Java call, quiet."""
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        f.write("".join(s.replace("\n", " ").replace("\r", " ") + "\n" for s in sentences))
    try:
        out = subprocess.run(
            ["java", "-cp", ptb.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", "-encoding", "utf-8", f.name],
            cwd=Path(ptb.__file__).parent, capture_output=True, check=True,
        )
    finally:
        os.unlink(f.name)
    lines = out.stdout.decode("utf-8").split("\n")
    if len(lines) < len(sentences):
        raise RuntimeError(f"the PTB tokenizer returned {len(lines)} lines for {len(sentences)} sentences")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS) for line in lines[: len(sentences)]]


class _Meteor:
    """METEOR 1.5 as pycocoevalcap runs it (same jar, options and protocol), kept running between calls.

    Its start-up (loading the paraphrase table) costs 10-30 s, so one process serves every epoch.
    """

    def __init__(self) -> None:
        from pycocoevalcap.meteor import meteor

        self._proc = subprocess.Popen(
            ["java", "-jar", "-Xmx2G", meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=Path(meteor.__file__).parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self._lock = threading.Lock()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _send(self, lines: list[str]) -> None:
        self._proc.stdin.write("".join(line + "\n" for line in lines).encode("utf-8"))  # type: ignore[union-attr]
        self._proc.stdin.flush()  # type: ignore[union-attr]

    def _read(self, n: int) -> list[str]:
        return [self._proc.stdout.readline().decode("utf-8").strip() for _ in range(n)]  # type: ignore[union-attr]

    def score(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
        """Corpus METEOR of one hypothesis per key against its references (PTB-tokenized text), and each key's own."""
        lines = [" ||| ".join(("SCORE", *gts[i], res[i][0].replace("|||", "").replace("  ", " "))) for i in gts]
        with self._lock:
            stats = []
            for start in range(0, len(lines), 100):  # chunks: neither pipe fills while the other waits
                self._send(lines[start : start + 100])
                stats += self._read(len(lines[start : start + 100]))
            self._send([" ||| ".join(("EVAL", *stats))])
            *per_key, corpus = map(float, self._read(len(stats) + 1))  # a score per image, then the corpus score
            return corpus, per_key

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


@functools.lru_cache(maxsize=1)
def _running_meteor() -> _Meteor:
    meteor = _Meteor()
    atexit.register(meteor.close)
    return meteor


def _meteor() -> _Meteor:
    """The process-wide METEOR, restarted if it has died."""
    if not _running_meteor().alive():
        _running_meteor.cache_clear()
    return _running_meteor()


def _tokenized(predictions: list[str], references: list[list[str]]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """(references, predictions) keyed by image, PTB-tokenized in one Java call, as pycocoevalcap's scorers take them."""
    tokens = _ptb_tokenize(predictions + [r for refs in references for r in refs])
    res = {i: [t] for i, t in enumerate(tokens[: len(predictions)])}
    gts, start = {}, len(predictions)
    for i, refs in enumerate(references):
        gts[i], start = tokens[start : start + len(refs)], start + len(refs)
    return gts, res


def coco_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap; {} (with one warning) without Java.

    CIDEr takes its document frequencies from the references given, so it needs a test set of
    many images to mean what published CIDEr means. A Java failure is a warning, never an error.
    """
    return _coco_scores(predictions, references)[0]


def _coco_scores(predictions: list[str], references: list[list[str]]) -> tuple[dict[str, float], list[float] | None]:
    """`coco_metrics`, and each caption's METEOR (None when METEOR was not scored)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check(predictions, references)
    if not java_available():
        _warn_no_java()
        return {}, None
    _note_no_spice()
    try:
        gts, res = _tokenized(predictions, references)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        warn(f"The PTB tokenizer (Java) failed, so this evaluation has no BLEU, METEOR, ROUGE-L or CIDEr: {e}")
        return {}, None
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    metrics = {f"bleu{n}": float(b) for n, b in enumerate(bleu, start=1)}
    meteor, per_caption = _meteor(), None
    try:
        metrics["meteor"], per_caption = meteor.score(gts, res)
    except (OSError, ValueError) as e:  # the process died: start a fresh one next time
        meteor.close()
        warn(f"METEOR (Java) failed, so this evaluation has no `meteor`: {type(e).__name__}: {e}")
    metrics["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    metrics["cider"] = float(Cider().compute_score(gts, res)[0])
    return metrics, per_caption


def caption_metrics(
    predictions: list[str], references: list[list[str]], evaluation: EvaluationConfig, device: str = "cpu"
) -> dict[str, float]:
    """BERTScore, plus the COCO metrics when `evaluation.coco_metrics` is on and Java is available."""
    return score_captions(predictions, references, evaluation, device)[0]


def score_captions(
    predictions: list[str], references: list[list[str]], evaluation: EvaluationConfig, device: str = "cpu"
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """`caption_metrics`' scores, and each caption's own from the same pass: `bertscore_f1` always,
    `meteor` when METEOR was scored."""
    rows = bertscore_per_caption(predictions, references, model=evaluation.bertscore_model,
                                 num_layers=evaluation.bertscore_num_layers, device=device,
                                 batch_size=evaluation.batch_size)
    metrics, per_caption = _bertscore_means(rows), {"bertscore_f1": [row[2] for row in rows]}
    if evaluation.coco_metrics:
        coco, meteor = _coco_scores(predictions, references)
        metrics |= coco
        if meteor is not None:
            per_caption["meteor"] = [float(m) for m in meteor]
    return metrics, per_caption
