"""Chaos: `capexp study --workers 2` while its workers are SIGKILLed, then rerun until it is done.

A study of N trials on the quickstart base (tiny overrides: a trial takes seconds) runs in a
fresh folder (its own MLflow SQLite store, study journal and feature cache). A driver SIGKILLs a
random worker process (a child of the study command) every `--interval` seconds, at most
`--max-kills` times, and runs the same command again whenever it exits, until it exits 0 with
N trials done. Then it checks, through Optuna, MLflow and sqlite3:

- N complete + pruned trials (N + 1 at most: two workers that finish at the same moment may both
  start the last one, as `capexp study` documents), none RUNNING or WAITING;
- every trial whose worker was killed is FAIL and was retried exactly once (same parameters);
  no two finished trials descend from one original (nothing duplicated), and every FAIL has a
  retry (nothing lost);
- every trial's MLflow run is in a final state (no RUNNING left), complete and pruned trials
  have exactly one FINISHED run each, and the study's parent run is FINISHED;
- the MLflow SQLite store passes `PRAGMA integrity_check`;
- the feature cache serves every image of the base (nothing encoded) and reads back
  bit-identical to a fresh encoding into an empty cache (same batches and thread count as a worker).

    python benchmarks/chaos_study.py [--trials 8] [--interval 4] [--max-kills 4] [--seed 0] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "quickstart.json"
TINY = [  # a trial takes seconds: 3 training steps and 4 validation images per epoch, 2 epochs
    "training_config.num_epochs=2", "data_paths.num_train=24", "data_paths.num_val=4", "training_config.batch_size=8",
    "training_config.warmup_steps=0", "evaluation.coco_metrics=false", "evaluation.max_images=4",
]
SPACE = {
    "objective": {"metric": "val_loss"},
    "pruner": {"name": "median", "n_startup_trials": 2},
    "params": {
        "training_config.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        "gpt2_config.visual_tokens_length": {"choices": [2, 4]},
    },
}
NAME = "chaos"


def _workers(study_pid: int) -> list[int]:
    """The study command's worker processes (spawned children; not multiprocessing's resource tracker)."""
    import psutil

    try:
        children = psutil.Process(study_pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                out.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def run_chaos(folder: Path, trials: int = 8, interval: float = 4.0, max_kills: int = 4, seed: int = 0,
              max_runs: int = 10, timeout: float = 900.0) -> dict[str, Any]:
    """Run the chaos study in `folder`; return the figures and a list of `problems` (empty: all invariants hold)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlruns").mkdir(exist_ok=True)
    space = folder / "space.json"
    space.write_text(json.dumps(SPACE))
    env = {**os.environ, "CAPEXP_CACHE": str(folder / "cache"), "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-c", "from capexp.cli import main; main()", "study", "--spec", str(BASE),
           "--trials", str(trials), "--workers", "2", "--name", NAME, "--space", str(space),
           *[f"--set={s}" for s in TINY]]
    kills, runs, exits = 0, 0, []
    started = time.monotonic()
    while True:
        runs += 1
        if runs > max_runs or time.monotonic() - started > timeout:
            last = (folder / f"run{runs - 1}.log").read_text()[-2000:] if runs > 1 else ""
            raise RuntimeError(f"the study was not done after {runs - 1} runs ({time.monotonic() - started:.0f}s); "
                               f"exits {exits}; the last said:\n{last}")
        with open(folder / f"run{runs}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
            next_kill = time.monotonic() + interval
            while proc.poll() is None:
                time.sleep(0.2)
                if kills < max_kills and time.monotonic() >= next_kill:
                    workers = _workers(proc.pid)
                    if workers:
                        victim = rng.choice(workers)
                        try:
                            os.kill(victim, signal.SIGKILL)
                            kills += 1
                        except ProcessLookupError:
                            pass
                    next_kill = time.monotonic() + interval
            exits.append(proc.returncode)
        if proc.returncode == 0:
            break
    wall = time.monotonic() - started
    figures = {"trials": trials, "kills": kills, "runs_of_the_command": runs, "exit_codes": exits,
               "wall_seconds": round(wall, 1), "interval": interval, "max_kills": max_kills}
    figures |= _check(folder, trials)
    return figures


def _check(folder: Path, n: int) -> dict[str, Any]:
    """The figures of the finished study in `folder`, with `problems`: every invariant that failed."""
    import optuna
    from optuna.trial import TrialState

    from capexp.study import open_storage

    storage = str(folder / "studies" / f"{NAME}.journal")
    trials = optuna.load_study(study_name=NAME, storage=open_storage(storage, NAME)).get_trials()
    states = [t.state.name for t in trials]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    problems = _trial_problems(trials, finished, failed, n)
    runs, late, run_problems = _run_problems(folder, finished, failed)
    problems += run_problems

    with sqlite3.connect(folder / "mlruns" / "mlflow.db") as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        problems.append(f"PRAGMA integrity_check: {integrity}")

    cache = _cache_reads_back(folder)
    if not cache["identical"] or cache["encoded_again"]:
        problems.append(f"feature cache: {cache}")
    statuses = [r.info.status for r in runs]
    return {"past_n": len(finished) - n, "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "mlflow_runs": len(runs), "killed_runs": statuses.count("KILLED"),
            "finished_runs_of_killed_trials": late, "integrity": integrity,
            "cache_images": cache["images"], "problems": problems}


def _trial_problems(trials: list, finished: list, failed: list, n: int) -> list[str]:
    """Optuna's side: n trials done, none left RUNNING or WAITING, every FAIL retried exactly once."""
    problems: list[str] = []
    states = [t.state.name for t in trials]
    if not n <= len(finished) <= n + 1:  # two workers that finish together may both start the last trial
        problems.append(f"{len(finished)} complete + pruned trials, not {n}")
    for state in ("RUNNING", "WAITING"):
        if state in states:
            problems.append(f"{states.count(state)} trials left {state}")

    # Optuna's retry of trial X carries `failed_trial` (the first trial of the chain) and
    # `retry_history` (every trial of the chain, X last)
    origins = [t.system_attrs.get("failed_trial", t.number) for t in finished]
    if len(origins) != len(set(origins)):
        problems.append(f"duplicated trials: finished trials share originals {sorted(origins)}")
    for t in failed:
        retries = [r for r in trials if r.system_attrs.get("retry_history", [None])[-1] == t.number]
        if len(retries) != 1:
            problems.append(f"trial {t.number} (FAIL) has {len(retries)} retries, not 1")
        elif retries[0].params != t.params:
            problems.append(f"trial {t.number}'s retry {retries[0].number} has other parameters")
    return problems


def _run_problems(folder: Path, finished: list, failed: list) -> tuple[list, int, list[str]]:
    """MLflow's side: the study's runs, how many killed trials' runs had FINISHED, and what is wrong with them."""
    import mlflow

    from capexp.study import TAG_STUDY_ROLE, TAG_TRIAL

    problems: list[str] = []
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("capexp")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`capexp.study` = '{NAME}'", max_results=5000)
    parents = [r for r in runs if r.data.tags.get(TAG_STUDY_ROLE) == "parent"]
    children = [r for r in runs if r.data.tags.get(TAG_STUDY_ROLE) != "parent"]
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"parent runs: {[p.info.status for p in parents]}, not one FINISHED")
    statuses = [r.info.status for r in runs]
    if "RUNNING" in statuses or "SCHEDULED" in statuses:
        problems.append(f"runs not in a final state: {[r.info.run_name for r in runs if r.info.status in ('RUNNING', 'SCHEDULED')]}")
    for t in finished:
        mine = [r for r in children if r.data.tags.get(TAG_TRIAL) == str(t.number)]
        if len(mine) != 1 or mine[0].info.status != "FINISHED" or mine[0].info.run_id != t.user_attrs.get("mlflow_run_id"):
            problems.append(f"trial {t.number} ({t.state.name}) has runs {[(r.info.run_id, r.info.status) for r in mine]}")
    late = 0  # killed after its run ended FINISHED but before Optuna recorded the trial: it ran again
    for t in failed:
        mine = [r for r in children if r.data.tags.get(TAG_TRIAL) == str(t.number)]
        late += sum(r.info.status == "FINISHED" for r in mine)
        if any(r.info.status not in ("KILLED", "FAILED", "FINISHED") for r in mine) or len(mine) > 1:
            problems.append(f"killed trial {t.number} has runs {[r.info.status for r in mine]}")
    return runs, late, problems


def _cache_reads_back(folder: Path) -> dict[str, Any]:
    """The base's images read from the chaos cache, against a fresh encoding into an empty cache."""
    import torch

    from capexp.backbones import resolve_encoder
    from capexp.data import load_data
    from capexp.backbones.feature_cache import encode_images
    from capexp.spec.loading import load_spec

    spec = load_spec(BASE, TINY)
    splits = load_data(spec)
    images = splits.train.images + splits.val.images
    card = resolve_encoder(spec.clip_config.model, spec.clip_config.image_size, spec.clip_config.features)
    old, threads = os.environ.get("CAPEXP_CACHE"), torch.get_num_threads()
    # as a study worker encodes (capexp.study gives each of 2 workers half the cores): a CPU
    # encoder's last bits depend on the thread count and the batches, the cache's on nothing else
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        os.environ["CAPEXP_CACHE"] = str(folder / "cache")
        cached = encode_images(card, images, batch_size=spec.evaluation.batch_size, progress=False)
        with tempfile.TemporaryDirectory(prefix="capexp-chaos-fresh-") as fresh:
            os.environ["CAPEXP_CACHE"] = fresh
            for split in (splits.train, splits.val):  # in the batches a run encodes them
                encode_images(card, split.images, batch_size=spec.evaluation.batch_size, progress=False)
            again = encode_images(card, images, batch_size=spec.evaluation.batch_size, progress=False)
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("CAPEXP_CACHE", None)
        else:
            os.environ["CAPEXP_CACHE"] = old
    return {"images": len(images), "encoded_again": cached.n_encoded,
            "identical": cached.kept == again.kept and torch.equal(cached.features, again.features)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between kills")
    parser.add_argument("--max-kills", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="which worker is killed")
    parser.add_argument("--keep", action="store_true", help="keep the folder (store, journal, cache, logs) and print it")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="capexp-chaos-"))
    figures = run_chaos(folder, args.trials, args.interval, args.max_kills, args.seed)
    print(json.dumps(figures, indent=2))
    if args.keep:
        print(f"kept {folder}")
    else:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    raise SystemExit(1 if figures["problems"] else 0)


if __name__ == "__main__":
    main()
