"""Caption metrics on hand-checked tiny cases: pycocoevalcap's COCO metrics and BERTScore."""

from __future__ import annotations

import logging
import math

import pytest

from capexp.evaluation import metrics
from capexp.evaluation.metrics import bertscore, caption_metrics, coco_metrics, java_available
from capexp.spec.schema import EvaluationConfig

COCO_KEYS = {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
BERT_KEYS = {"bertscore_precision", "bertscore_recall", "bertscore_f1"}

REFERENCES = [
    ["a brown dog is running through the green grass", "a dog runs on a lawn"],
    ["two children are playing on the sandy beach", "kids play in the sand by the sea"],
    ["a man in a red jacket climbs a rocky cliff", "a climber scales a steep rock face"],
]

needs_java = pytest.mark.skipif(not java_available(), reason="java is not installed")


@pytest.fixture(scope="module", autouse=True)
def _fast_start():
    """METEOR loads its paraphrase table (10-30 s) in the background while BERTScore runs on one thread."""
    import torch

    if java_available():
        metrics._meteor()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bertscore_identical_unrelated_and_best_reference() -> None:
    pred = "a brown dog is running through the green grass"
    same = bertscore([pred], [[pred]])
    assert set(same) == BERT_KEYS and all(v == pytest.approx(1.0, abs=1e-4) for v in same.values())
    close, far = "a dog runs on a lawn", "stock markets fell sharply on monday"
    good = bertscore([pred], [[close]])["bertscore_f1"]
    bad = bertscore([pred], [[far]])["bertscore_f1"]
    assert bad < good < same["bertscore_f1"]
    assert bertscore([pred], [[far, close]])["bertscore_f1"] == pytest.approx(good, abs=1e-6)


def test_empty_captions_score_zero_in_bertscore_instead_of_crashing() -> None:
    pred = "a dog runs across the grass"
    alone = bertscore([pred], [[pred]])["bertscore_f1"]
    got = bertscore([pred, "", "  "], [[pred], [pred], [pred]])
    assert got["bertscore_f1"] == pytest.approx(alone / 3, abs=1e-6)  # the two empty captions count as 0
    assert bertscore([""], [[pred]]) == {"bertscore_precision": 0.0, "bertscore_recall": 0.0, "bertscore_f1": 0.0}


@needs_java
def test_prediction_equal_to_a_reference_scores_full_marks() -> None:
    got = coco_metrics([refs[i % 2] for i, refs in enumerate(REFERENCES)], REFERENCES)
    assert set(got) == COCO_KEYS
    assert got["bleu1"] == pytest.approx(1.0) and got["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert got["rouge_l"] == pytest.approx(1.0)
    assert got["meteor"] > 0.95
    assert got["cider"] > 3.0  # CIDEr-D is x10 scaled; a perfect caption scores several units


@needs_java
def test_disjoint_prediction_scores_nothing_and_empty_captions_do_not_crash() -> None:
    got = coco_metrics(["purple elephants juggle umbrellas", "", "an orchestra tunes violins"], REFERENCES)
    assert got["bleu1"] == pytest.approx(0.0, abs=1e-6) and got["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert got["rouge_l"] == 0.0 and got["cider"] == pytest.approx(0.0, abs=1e-9)
    assert got["meteor"] < 0.05


@needs_java
def test_bleu1_by_hand_with_ptb_tokenization() -> None:
    predictions = ["A dog runs on the grass.", "a cat, cat sleeps"]
    references = [["A dog is running on the green grass.", "Dog runs!"], ["The cat sleeps on a mat"]]
    # PTB: lowercase, punctuation dropped. Image 1: 6 of 6 words match; closest reference length 8.
    # Image 2: a, cat (clipped to 1 of 2), sleeps = 3 of 4 words; reference length 6.
    # Corpus BLEU-1 = 9/10 * brevity penalty exp(1 - 14/10).
    expected = 9 / 10 * math.exp(1 - 14 / 10)
    assert coco_metrics(predictions, references)["bleu1"] == pytest.approx(expected, abs=1e-6)


def test_without_java_coco_metrics_warn_once_and_return_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    metrics._warn_no_java.cache_clear()
    with caplog.at_level(logging.WARNING, logger="capexp"):
        assert coco_metrics(["a dog"], [["a dog runs"]]) == {}
        assert coco_metrics(["a dog"], [["a dog runs"]]) == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "`java` is not on PATH" in warnings[0]
    metrics._warn_no_java.cache_clear()


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        coco_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        bertscore(["a"], [[]])


@needs_java
def test_caption_metrics_follow_the_evaluation_config() -> None:
    predictions = [refs[0] for refs in REFERENCES]
    assert set(caption_metrics(predictions, REFERENCES, EvaluationConfig(coco_metrics=False))) == BERT_KEYS
    assert set(caption_metrics(predictions, REFERENCES, EvaluationConfig())) == BERT_KEYS | COCO_KEYS
