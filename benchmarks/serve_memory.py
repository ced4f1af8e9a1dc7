"""Peak memory of `mlflow models serve` for worst-case requests to a registered capexp model.

A tiny quickstart run is trained and registered in a fresh folder, served with `mlflow models
serve --env-manager local`, and sent, one at a time:

- `bombs`: the most rows a request may have (CAPEXP_SERVE_MAX_ROWS), each a 12000 x 12000 palette
  PNG (about 140 KB of file, 144 M pixels): refused from the image headers (HTTP 400);
- `budget`: the most pixels a request may decode (CAPEXP_SERVE_MAX_PIXELS) as palette PNGs at the
  pixel cap (8192 x 8192, CAPEXP_MAX_IMAGE_PIXELS): decoded and captioned (HTTP 200);
- `one`: a single 224 x 224 photo, for scale.

The server's memory is the resident set (RSS) of its whole process tree, sampled every 20 ms; each
figure is the peak during the request, and the idle RSS before the first request.

    python benchmarks/serve_memory.py
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["training_config.num_epochs=1", "data_paths.num_train=16", "training_config.batch_size=16",
        "training_config.one_caption_per_image=true", "data_paths.num_val=4", "evaluation.coco_metrics=false",
        'id="served"']


def _png(mode: str, size: tuple[int, int]) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _post(port: int, rows: list[str]) -> tuple[int, str]:
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows]}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, response.read().decode()[:200]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:300]


def _peak_during(pid: int, port: int, rows: list[str]) -> dict:
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    status, answer = _post(port, rows)
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    return {"status": status, "answer": answer, "request_bytes": sum(len(r) for r in rows), "rows": len(rows),
            "peak_rss_mb": round(peak[0] / 2**20), "seconds": round(seconds, 1)}


def main() -> None:
    from capexp.data.images import max_image_pixels
    from capexp.serving.request_limits import RequestLimits

    folder = Path(tempfile.mkdtemp(prefix="capexp-serve-memory-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CAPEXP_CACHE": str(folder / "cache"), "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cli = [sys.executable, "-c", "from capexp.cli import main; main()"]
    subprocess.run([*cli, "run", str(REPO / "experiments" / "quickstart.json"), *[f"--set={s}" for s in TINY]],
                   env=env, check=True, capture_output=True)
    subprocess.run([*cli, "register", "served", "--name", "captioner"], env=env, check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (folder / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/captioner@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit((folder / "serve.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        limits, cap = RequestLimits.from_env(), max_image_pixels()
        side = int(cap**0.5)
        photo = _png("RGB", (224, 224))
        figures = {"limits": {"rows": limits.rows, "bytes": limits.bytes, "pixels": limits.pixels, "image_cap": cap},
                   "idle_rss_mb": round(_tree_rss(server.pid) / 2**20)}
        figures["one"] = _peak_during(server.pid, port, [photo])
        figures["bombs"] = _peak_during(server.pid, port, [_png("P", (12000, 12000))] * limits.rows)
        figures["budget"] = _peak_during(server.pid, port, [_png("P", (side, side))] * (limits.pixels // (side * side)))
        print(json.dumps(figures, indent=2))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        log.close()


if __name__ == "__main__":
    main()
