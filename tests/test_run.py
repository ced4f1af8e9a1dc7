"""`capexp run` end to end on CPU: a quickstart spec becomes a tracked MLflow run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
from PIL import Image
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from capexp.cli import cli
from capexp.training.run import run_spec
from capexp.tracking import run_checkpoint

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.json"
METRICS = ["train_loss", "val_loss", "bertscore_precision", "bertscore_recall", "bertscore_f1"]


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_quickstart_run_is_tracked_with_curves_checkpoint_and_cache_reuse(
    tracking_uri: str, tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch, tiny
) -> None:
    monkeypatch.setenv("CAPEXP_CACHE", str(tmp_path / "cache"))  # an empty feature cache
    runner = CliRunner()
    args = ["run", str(QUICKSTART), *tiny.args("training_config.num_epochs=3", "id=first", "notes=tiny quickstart")]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("capexp").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.tags["mlflow.note.content"] == "tiny quickstart"
    assert {"capexp.spec_hash", "capexp.version", "capexp.git_commit", "capexp.device"} <= set(run.data.tags)
    assert run.data.params["clip_config.image_size"] == "[64, 64]"
    assert run.data.params["gpt2_config.visual_tokens_length"] == "4"
    assert run.data.params["data_paths.source"] == "generated"
    for name in METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2, 3], name
    val = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert val[-1] < val[0]  # it learns
    assert run.data.metrics["images_encoded"] == 12 and run.data.metrics["images_skipped"] == 0
    files = _artifacts(client, run.info.run_id)
    assert {"spec.json", "curves.png", "val_captions.csv", "run.log"} <= files
    assert not any(f.startswith("checkpoint/") for f in files)  # the checkpoint is stored once: in the run's model
    checkpoint = run_checkpoint(run.info.run_id, "first")
    assert {p.name for p in checkpoint.iterdir()} == {"model.safetensors", "capexp.json"}
    assert not any(p.suffix in (".pkl", ".pt", ".pth") for p in checkpoint.parents[1].rglob("*"))  # the whole model
    meta = json.loads((checkpoint / "capexp.json").read_text())
    assert meta["epoch"] == run.data.metrics["best_epoch"]
    # vocabulary "train": the checkpoint records the kept GPT-2 ids, a few dozen shape words, not 50,257
    assert 10 < len(meta["vocabulary"]) < 100 and 50256 in meta["vocabulary"]  # EOS kept
    assert run.data.params["vocabulary_size"] == str(len(meta["vocabulary"]))
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["generated-training", "generated-validation"]

    # the second run of the same spec encodes nothing: every image comes from the feature cache,
    # and it gets the same results as the run that encoded them
    caplog.set_level("INFO", logger="capexp")
    second = runner.invoke(cli, [*args[:-4], "--set", "id=second"])
    assert second.exit_code == 0, second.output
    (again,) = client.search_runs([run.info.experiment_id], "attributes.run_name = 'second'")
    assert again.data.metrics["images_encoded"] == 0 and again.data.metrics["images_cached"] == 12
    assert 0 <= again.data.metrics["encode_minutes"] < run.data.metrics["encode_minutes"]  # reading beats encoding
    assert "8 of 8 images cached, 0 to encode" in caplog.text
    assert {k: again.data.metrics[k] for k in METRICS} == {k: run.data.metrics[k] for k in METRICS}


def test_crash_or_interrupt_keeps_what_was_logged(tracking_uri: str, tiny) -> None:
    spec = tiny.spec("training_config.num_epochs=3")

    def crash(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise RuntimeError("disk full")

    def interrupt(epoch: int, metrics: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(RuntimeError):
        run_spec(spec.model_copy(update={"id": "crashed"}), on_epoch=crash)
    with pytest.raises(KeyboardInterrupt):
        run_spec(spec.model_copy(update={"id": "stopped"}), on_epoch=interrupt)
    client = MlflowClient(tracking_uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("capexp").experiment_id])}
    assert runs["crashed"].info.status == "FAILED" and runs["stopped"].info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(runs["crashed"].info.run_id, "val_loss")] == [1, 2]
    for run in runs.values():  # the best checkpoint so far (in the run's model) and the log survive
        assert {"run.log", "curves.png"} <= _artifacts(client, run.info.run_id)
        assert (run_checkpoint(run.info.run_id, run.info.run_name) / "model.safetensors").is_file()
    assert mlflow.active_run() is None


def test_diverging_training_stops_with_a_clear_error(tracking_uri: str, tiny) -> None:
    # four steps in epoch 1: the loss of the steps after the first is nan
    sets = tiny.args("training_config.learning_rate=1e6", "training_config.batch_size=2", "training_config.num_epochs=3",
                     "id=diverged")
    result = CliRunner().invoke(cli, ["run", str(QUICKSTART), *sets])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "quickstart.json: run diverged ends FAILED: the training loss became nan at epoch 1" in message
    assert "Lower `training_config.learning_rate` (now 1e+06)" in message  # what to change
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("capexp").experiment_id])
    assert run.info.status == "FAILED" and "run.log" in _artifacts(client, run.info.run_id)


def test_unreadable_images_are_skipped_and_counted(tracking_uri: str, tmp_path: Path, make_photos, tiny) -> None:
    photos = [p for p, _ in make_photos(tmp_path / "photos", 6)]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 48 KB, 400 M pixels: Pillow's decompression-bomb error
    entries = [{"image": str(p), "caption": "a photo"} for p in photos[:4]] + [
        {"image": str(tmp_path / name), "caption": "x"} for name in ("broken.jpg", "bomb.png")]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    (tmp_path / "val.json").write_text(json.dumps([{"image": str(p), "caption": "a photo"} for p in photos[4:]]))
    result = tiny.run(f'data_paths={{"train_captions_path": "{tmp_path}/train.json", '
                      f'"val_captions_path": "{tmp_path}/val.json", "source": "caption_list"}}')
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["images_skipped"] == 2 and run.data.tags["capexp.skipped_images"] == "2"
    with Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="skipped_images.csv")).open() as f:
        reasons = {row["image_id"]: row["reason"] for row in csv.DictReader(f)}
    assert reasons["bomb.png"].startswith("unreadable: DecompressionBombError")
    assert reasons["broken.jpg"].startswith("unreadable: UnidentifiedImageError")


def test_missing_data_and_bad_freeze_fail_before_any_run(tracking_uri: str, tmp_path: Path, tiny) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["run", str(REPO / "experiments" / "flickr8k.json"), "--set", f"data_paths.root={tmp_path}/none"])
    assert missing.exit_code == 2
    assert "data_paths.root" in missing.stderr and "--set" in missing.stderr
    too_deep = runner.invoke(cli, ["run", str(QUICKSTART), *tiny.args("gpt2_config.n_layers_to_freeze=99")])
    assert too_deep.exit_code == 2 and "n_layers_to_freeze" in too_deep.stderr
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("capexp")
    assert exp is None or client.search_runs([exp.experiment_id]) == []
