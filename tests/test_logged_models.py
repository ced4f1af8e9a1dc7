"""Every run's best checkpoint is an MLflow logged model: found with its scores, captioning by its
`models:/m-...` URI, registered without a second copy, and older runs' checkpoint artifacts still read."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from safetensors import safe_open

from capexp.cli import cli
from capexp.serving.folder import caption_folder
from capexp.model.checkpoint import find_checkpoint
from capexp.serving.register import register_run
from capexp.tracking import run_checkpoint, run_model, use_store

# two epochs, so that the model kept (the best epoch's) can differ from the last epoch's
TWO_EPOCHS = "training_config.num_epochs=2"
NAMES = ["model-a", "model-b"]


@pytest.fixture(scope="module")
def runs(quickstart_runs) -> Iterator[tuple[str, list[str]]]:
    with quickstart_runs(NAMES, TWO_EPOCHS) as made:
        yield made


def _weights(uri: str) -> list[Path]:
    """Every weights file in the store's artifacts."""
    return sorted((Path(uri[len("sqlite:///"):]).parent / "artifacts").rglob("model.safetensors"))


def _rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        return [(r["image_id"], r["caption"]) for r in csv.DictReader(f)]


def test_search_logged_models_finds_one_model_per_run_with_its_scores(runs) -> None:
    uri, ids = runs
    use_store(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("capexp").experiment_id
    models = mlflow.search_logged_models(experiment_ids=[exp], output_format="list")
    assert sorted(m.source_run_id for m in models) == sorted(ids)
    for model in models:
        run = client.get_run(model.source_run_id)
        scores = {m.key: m.value for m in model.metrics}
        best = int(run.data.metrics["best_epoch"])
        assert scores["best_val_loss"] == run.data.metrics["best_val_loss"]
        val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
        assert scores["val_loss"] == val[best] and scores["bertscore_f1"] > 0  # the scores of the kept epoch
        assert model.params["gpt2_config.model"] == "gpt2-tiny"  # the run's params, shown beside its scores
        assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
        assert not client.list_artifacts(run.info.run_id, "checkpoint")  # not beside the model too
    assert len(_weights(uri)) == len(ids)  # one copy of each run's weights in the whole store


def test_caption_with_a_logged_model_uri_matches_the_run(runs, make_photos, tmp_path) -> None:
    uri, ids = runs
    use_store(uri)
    model = run_model(ids[0])
    folder = tmp_path / "photos"
    make_photos(folder, 3)
    runner = CliRunner()
    for source, out in ((["--model", f"models:/{model.model_id}"], "m.csv"), (["--run", ids[0]], "r.csv")):
        result = runner.invoke(cli, ["caption", str(folder), *source, "--output", str(tmp_path / out), "--tracking-uri", uri])
        assert result.exit_code == 0, result.output
    assert _rows(tmp_path / "m.csv") == _rows(tmp_path / "r.csv") and len(_rows(tmp_path / "m.csv")) == 3

    missing = runner.invoke(cli, ["caption", str(folder), "--model", "models:/m-0123456789abcdef0123456789abcdef",
                                  "--output", str(tmp_path / "x.csv"), "--tracking-uri", uri])
    assert missing.exit_code == 2 and "Logged models" in missing.output and not (tmp_path / "x.csv").exists()


def test_register_reuses_the_runs_model_without_copying_weights(runs) -> None:
    uri, ids = runs
    use_store(uri)
    before = _weights(uri)
    registered = register_run(NAMES[1], "reused", tracking_uri=uri)
    client = MlflowClient()
    version = client.get_model_version_by_alias("reused", "champion")
    assert version.source == f"models:/{run_model(ids[1]).model_id}" and registered.run_id == ids[1]
    assert _weights(uri) == before
    assert find_checkpoint("models:/reused@champion", tracking_uri=uri).folder == run_checkpoint(ids[1], NAMES[1])


def test_a_run_with_only_a_checkpoint_artifact_still_captions_and_registers(runs, tmp_path) -> None:
    """Runs from before runs logged models keep their checkpoint as the run's own `checkpoint` artifact."""
    uri, ids = runs
    use_store(uri)
    client = MlflowClient()
    source = run_checkpoint(ids[0], NAMES[0])
    exp = client.get_experiment_by_name("capexp").experiment_id
    with mlflow.start_run(experiment_id=exp, run_name="older") as old:
        mlflow.log_artifacts(str(source), artifact_path="checkpoint")
    assert run_model(old.info.run_id) is None
    checkpoint = find_checkpoint(old.info.run_id, tracking_uri=uri)
    assert old.info.run_id in str(checkpoint.folder) and checkpoint.meta.epoch is not None  # the run's own artifact

    register_run(old.info.run_id, "older", tracking_uri=uri)  # logs its model once, then registers that
    model = run_model(old.info.run_id)
    assert client.get_model_version_by_alias("older", "champion").source == f"models:/{model.model_id}"
    assert find_checkpoint("models:/older@champion", tracking_uri=uri).meta.epoch == checkpoint.meta.epoch


def test_a_run_with_frozen_blocks_stores_trained_weights_and_registers_every_weight(
    runs, make_photos, tmp_path, monkeypatch, tiny
) -> None:
    uri, _ = runs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = tiny.run("gpt2_config.n_layers_to_freeze=3", 'id="frozen"').run_id

    def blocks(folder: Path) -> set[str]:
        with safe_open(folder / "model.safetensors", "pt") as f:
            return {k.split(".h.")[1].split(".")[0] for k in f.keys() if ".h." in k}

    trained = find_checkpoint(run_id, tracking_uri=uri)
    assert blocks(trained.folder) == {"3"} and trained.meta.frozen["base"] == "gpt2-tiny"  # blocks 0-2 frozen
    registered = register_run(run_id, "frozen", tracking_uri=uri)
    full = find_checkpoint(registered.model_uri, tracking_uri=uri)
    assert blocks(full.folder) == {"0", "1", "2", "3"} and full.meta.frozen is None  # self-contained

    folder = tmp_path / "photos"
    make_photos(folder, 3)
    caption_folder(folder, [trained], tmp_path / "t.csv")
    caption_folder(folder, [full], tmp_path / "f.csv")
    assert _rows(tmp_path / "t.csv") == _rows(tmp_path / "f.csv")  # the same model either way
