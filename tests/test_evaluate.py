"""`capexp evaluate` on CPU: a tiny trained run is captioned again and its scores land on that run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from capexp.errors import CapexpError
from capexp.evaluation.evaluate import evaluate_run

SCORES = ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "bertscore_f1"]


def test_evaluate_logs_split_metrics_and_captions_to_a_finished_run(tracking_uri: str, tmp_path: Path, tiny,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    result = tiny.run("id=tiny", "evaluation.coco_metrics=true", tracking_uri=tracking_uri)
    from capexp.evaluation import metrics as scoring
    calls = []
    monkeypatch.setattr(scoring, "bertscore_per_caption",
                        lambda *a, _score=scoring.bertscore_per_caption, **k: calls.append(1) or _score(*a, **k))

    metrics = evaluate_run("tiny", split="val", beam=2, no_repeat_ngram_size=2)

    assert len(calls) == 1  # the logged means and the per-image record come from one BERTScore pass

    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for name in SCORES:
        assert 0.0 <= metrics[f"val_{name}"] <= (10.0 if name == "cider" else 1.0), name
        assert run.data.metrics[f"val_{name}"] == pytest.approx(metrics[f"val_{name}"]), name
    assert run.data.metrics["val_images"] == 4
    assert run.data.tags["capexp.val_decoding"] == "beam=2 length_penalty=1.0 no_repeat_ngram_size=2"
    (model,) = client.search_logged_models([run.info.experiment_id])  # the run's model shows the scores too
    assert {m.key: m.value for m in model.metrics}["val_bertscore_f1"] == pytest.approx(metrics["val_bertscore_f1"])
    # the training's last validation captions stay; the evaluation's sit beside them
    assert {"val_captions.csv", "evaluation"} <= {f.path for f in client.list_artifacts(result.run_id)}
    csv_path = client.download_artifacts(result.run_id, "evaluation/val_captions.csv", str(tmp_path))
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and set(rows[0]) == {"image_id", "caption", "references"}
    assert all(r["references"] for r in rows)

    # generated data holds no test split: say so instead of passing off validation scores as test ones
    with pytest.raises(CapexpError, match="no test split.*--split val"):
        evaluate_run("tiny")
    with pytest.raises(CapexpError, match="no run is named 'nope'"):
        evaluate_run("nope", split="val")

    # an ensemble's scores go to a run of its own; two copies of one model score as that model
    same = evaluate_run("tiny", split="val", beam=2, no_repeat_ngram_size=2, ensemble=["tiny"])
    assert same == pytest.approx(metrics)
    (ensemble,) = client.search_runs([run.info.experiment_id], "tags.`capexp.ensemble` != ''")
    assert ensemble.info.run_name == "tiny+tiny"
    assert ensemble.data.tags["capexp.ensemble"] == f"{result.run_id},{result.run_id}"
    assert ensemble.data.metrics["val_cider"] == pytest.approx(metrics["val_cider"])
    assert len(client.get_metric_history(result.run_id, "val_cider")) == 1  # the member kept only its own evaluation
    # a member that predicts over other tokens cannot join
    tiny.run("id=full", "gpt2_config.vocabulary=full", tracking_uri=tracking_uri)
    with pytest.raises(CapexpError, match=r"'tiny' and 'full' cannot decode as one ensemble: their token "
                                          r"vocabularies .*gpt2_config.vocabulary"):
        evaluate_run("tiny", split="val", ensemble=["full"])
