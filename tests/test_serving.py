"""A run's logged model, registered by `capexp register`, served by `mlflow models serve` by its id."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from capexp.serving.folder import caption_folder
from capexp.model.checkpoint import find_checkpoint
from capexp.serving.register import register_run


@pytest.fixture(scope="module")
def registered(shared_store, tiny) -> Iterator[tuple[str, str, str]]:
    """A tiny quickstart run registered as `captioner@champion`: (store uri, run id, cache folder)."""
    with shared_store() as uri:
        run_id = tiny.run('id="tiny-served"').run_id
        model = register_run("tiny-served", "captioner", alias="champion")
        assert (model.version, model.run_id, model.model_uri) == ("1", run_id, "models:/captioner@champion")
        yield uri, run_id, os.environ["CAPEXP_CACHE"]


def test_registered_model_points_at_the_run_and_a_new_version_moves_the_alias(registered) -> None:
    from mlflow import MlflowClient

    uri, run_id, _ = registered
    client = MlflowClient(uri, registry_uri=uri)
    first = client.get_model_version_by_alias("captioner", "champion")
    assert (str(first.version), first.run_id) == ("1", run_id)
    assert "dataframe_split" in first.description  # how to call it, shown in the MLflow UI

    second = register_run(run_id, "captioner", alias="champion", tracking_uri=uri)
    assert second.version == "2"
    assert str(client.get_model_version_by_alias("captioner", "champion").version) == "2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _assert_one_line(answer: dict) -> None:
    """An error answer is one line: no traceback, no stack trace field, no file path."""
    assert "\n" not in answer["message"] and "Traceback" not in answer["message"] and ".py" not in answer["message"]
    assert "stack_trace" not in answer


@contextlib.contextmanager
def _serve(model_uri: str, env: dict[str, str], log: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """`mlflow models serve` of `model_uri` on a free port, once it answers /ping: (port, server process)."""
    port = _free_port()
    # `mlflow models serve` execs `uvicorn` from PATH: the venv's bin must be on it, as after `activate`
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env={**os.environ, **env, "PATH": path}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                assert server.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no /ping answer:\n{log.read_text()[-3000:]}"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(1)
            yield port, server
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # mlflow starts uvicorn in the same new session
            server.wait(timeout=30)


def test_mlflow_models_serve_captions_a_photo(registered, make_photos, tmp_path) -> None:
    """Served by the run's own logged model id (`models:/m-...`); `models:/captioner@champion` names the same model."""
    from mlflow import MlflowClient

    from capexp.tracking import run_model

    uri, run_id, cache = registered
    model_id = run_model(run_id).model_id
    assert MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("captioner", "champion").source == f"models:/{model_id}"
    env = {"MLFLOW_TRACKING_URI": uri, "CAPEXP_CACHE": cache, "CAPEXP_SERVE_MAX_ROWS": "4"}
    with _serve(f"models:/{model_id}", env, tmp_path / "serve.log") as (port, server):
        photo = make_photos(tmp_path / "photos", 1, px=224)[0][0]
        image = base64.b64encode(photo.read_bytes()).decode()
        status, answer = _post(port, {"dataframe_split": {"columns": ["image"], "data": [[image], [image]]}})
        assert status == 200, answer
        captions = [p["caption"] for p in answer["predictions"]]
        assert len(captions) == 2 and captions[0] == captions[1]
        assert isinstance(captions[0], str) and captions[0].strip()

        status, answer = _post(port, {"dataframe_records": [{"image": image}], "params": {"beam_size": 3}})
        assert status == 200 and answer["predictions"][0]["caption"].strip()

        status, answer = _post(port, {"dataframe_split": {"columns": ["image"], "data": [["bm90IGFuIGltYWdl"]]}})
        assert status == 400 and "not a readable image" in answer["message"]
        _assert_one_line(answer)

        buffer = io.BytesIO()
        Image.new("P", (12000, 12000)).save(buffer, format="PNG")  # 144 M pixels in a few hundred KB
        bomb = base64.b64encode(buffer.getvalue()).decode()
        status, answer = _post(port, {"dataframe_split": {"columns": ["image"], "data": [[image], [bomb]]}})
        assert status == 400 and answer["message"].startswith("row 1 of column `image` is not a readable image")
        assert "DecompressionBomb" in answer["message"]
        _assert_one_line(answer)
        status, answer = _post(port, {"dataframe_split": {"columns": ["image"], "data": [[image]] * 5}})
        assert status == 400 and "at most 4 images per request (CAPEXP_SERVE_MAX_ROWS)" in answer["message"]
        _assert_one_line(answer)
        assert server.poll() is None  # still serving


def test_caption_folder_with_a_registered_model_matches_the_run(registered, make_photos, tmp_path) -> None:
    uri, run_id, _ = registered
    folder = tmp_path / "photos"
    make_photos(folder, 4)
    by_model = caption_folder(folder, [find_checkpoint("models:/captioner@champion", tracking_uri=uri)], tmp_path / "m.csv")
    by_run = caption_folder(folder, [find_checkpoint(run_id, tracking_uri=uri)], tmp_path / "r.csv")
    assert by_model.images == by_run.images == 4
    assert (tmp_path / "m.csv").read_text() == (tmp_path / "r.csv").read_text()
    with (tmp_path / "m.csv").open(newline="") as f:
        assert {row["model_name"] for row in csv.DictReader(f)} == {"tiny-served"}


def test_request_limits_refuse_before_decoding_and_errors_stay_one_line(make_photos, tmp_path) -> None:
    """Rows, image bytes and header pixels are checked before any image is decoded; an unexpected
    error of the model reaches the client as one line (HTTP 500), its traceback only in the log."""
    from mlflow.exceptions import MlflowException

    from capexp.serving.request_limits import RequestLimits, RequestRejected, one_line_errors, request_images

    photo = make_photos(tmp_path, 1, px=100)[0][0].read_bytes()
    assert [im.size for im in request_images([photo, base64.b64encode(photo).decode()])] == [(100, 100)] * 2
    with pytest.raises(RequestRejected, match=r"3 rows; this server takes at most 2"):
        request_images([photo] * 3, RequestLimits(rows=2))
    with pytest.raises(RequestRejected, match=r"at most 100 per request \(CAPEXP_SERVE_MAX_BYTES\)"):
        request_images([photo], RequestLimits(bytes=100))
    with pytest.raises(RequestRejected, match=r"20000 pixels in all; this server decodes at most 19999"):
        request_images([photo, photo], RequestLimits(pixels=19999))
    with pytest.raises(RequestRejected, match="row 0 of column `image` is a int"):
        request_images([7])

    rejected = RequestRejected("row 3 is\nbad")
    rejected.message = f"Failed to predict data '{'x' * 50}'. \nError: {rejected.message}"  # what MLflow's server does
    assert json.loads(rejected.serialize_as_json())["message"] == "row 3 is bad"
    assert rejected.get_http_status_code() == 400

    @one_line_errors
    def broken(frame):
        raise KeyError(f"{tmp_path}/secret.py line 3")

    with pytest.raises(MlflowException) as failed:
        broken(None)
    body = json.loads(failed.value.serialize_as_json())
    assert failed.value.get_http_status_code() == 500 and str(tmp_path) not in body["message"]
    assert "KeyError" in body["message"] and "stack_trace" not in body


def test_bad_request_limit_settings_fail_the_model_load(monkeypatch) -> None:
    from capexp.serving.request_limits import RequestLimits

    monkeypatch.setenv("CAPEXP_SERVE_MAX_ROWS", "many")
    with pytest.raises(ValueError, match=r"\$CAPEXP_SERVE_MAX_ROWS is 'many'"):
        RequestLimits.from_env()
    monkeypatch.setenv("CAPEXP_SERVE_MAX_ROWS", "8")
    assert RequestLimits.from_env().rows == 8
