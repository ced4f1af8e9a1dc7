"""Benchmark: `capexp study --trials 20` on the quickstart base, from a cold feature cache.

Runs the command in a fresh temporary folder (its own MLflow store, study journal and feature
cache) and prints one table: wall time, trials complete / pruned / failed, and images encoded
versus served from the feature cache (summed over the trial runs' `images_encoded` and
`images_cached` metrics), and how many images were encoded twice for one encoder and size
(feature rows stored twice in the cache). What it checks: the study finishes within 10 minutes on
2 CPU cores, with at least a quarter of the trials pruned.

    python benchmarks/study_quickstart.py [--trials 20] [--workers 1] [--set KEY=JSON ...] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _capexp() -> str:
    """The `capexp` console script installed beside this Python."""
    script = Path(sys.executable).parent / "capexp"
    return str(script) if script.exists() else shutil.which("capexp") or "capexp"


def _results(folder: Path, name: str) -> dict[str, float]:
    import mlflow
    import optuna

    from capexp.study import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(str(folder / "studies" / f"{name}.journal"), name))
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("capexp")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`capexp.study` = '{name}'")
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    from safetensors import safe_open

    stored = []  # (encoder cache folder, image key) of every feature row in the cache
    for shard in sorted((folder / "cache" / "features").glob("*/*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            stored += [(shard.parent.name, key) for key in f.keys()]
    return {
        "twice": len(stored) - len(set(stored)),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "encoded": sum(r.data.metrics.get("images_encoded", 0) for r in trials),
        "cached": sum(r.data.metrics.get("images_cached", 0) for r in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON",
                        help="passed on to capexp study (repeatable), e.g. training_config.one_caption_per_image=true")
    parser.add_argument("--capexp", default=_capexp(), help="the capexp command to time (default: this install's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (MLflow store, journal) and print it")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="capexp-bench-"))
    env = {**os.environ, "CAPEXP_CACHE": str(folder / "cache"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"}
    (folder / "mlruns").mkdir()
    cmd = [args.capexp, "study", "--trials", str(args.trials), "--workers", str(args.workers), "--name", "bench"]
    cmd += [f"--set={text}" for text in args.overrides]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=folder, env=env, check=True)
    wall = time.perf_counter() - start
    got = _results(folder, "bench")

    finished = got["complete"] + got["pruned"]
    header = ["trials", "workers", "wall time", "complete", "pruned", "pruned share", "failed", "images encoded",
              "images from cache", "encoded twice"]
    row = [str(args.trials), str(args.workers), f"{wall / 60:.1f} min", str(got["complete"]), str(got["pruned"]),
           f"{got['pruned'] / finished:.0%}" if finished else "-", str(got["failed"]), f"{got['encoded']:.0f}",
           f"{got['cached']:.0f}", str(got["twice"])]
    widths = [max(len(h), len(c)) for h, c in zip(header, row)]
    print(f"\ncapexp study on the quickstart base{' with --set ' + ' '.join(args.overrides) if args.overrides else ''}, "
          f"{os.cpu_count()} CPU cores")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    if args.keep:
        print(f"kept {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
