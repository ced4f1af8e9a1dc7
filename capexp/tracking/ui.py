"""`capexp ui`: the MLflow UI on the capexp store, and the address that opens it on the training view.

capexp tags its experiments `mlflow.experimentKind=custom_model_development` (see
`store.experiment_id`). MLflow 3 UIs that follow the tag open them on the runs table and charts;
newer ones (3.17 among them) follow a per-browser "GenAI | Model training" switch instead,
GenAI by default, which the address's `workflowType=machine_learning` sets. `ui_url` adds both
the experiment and that parameter, so the printed link opens on the runs in either case.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from capexp.tracking.names import DEFAULT_EXPERIMENT
from capexp.tracking.store import artifact_root, experiment_id, resolve_tracking_uri, use_store

__all__ = ["WORKFLOW_QUERY", "run_ui", "ui_command", "ui_url"]

WORKFLOW_QUERY = "workflowType=machine_learning"  # the MLflow UI's "Model training" switch


def ui_command(tracking_uri: str | None, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line serving the capexp store (its artifacts beside it when local)."""
    uri = resolve_tracking_uri(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = artifact_root(uri)
    if root is not None:
        cmd += ["--default-artifact-root", root]
    return cmd


def ui_url(tracking_uri: str | None, host: str, port: int, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """The UI address of `experiment`'s runs in the training view (the home page when it does not exist yet)."""
    use_store(tracking_uri)
    exp = experiment_id(experiment, create=False)
    page = f"experiments/{exp}/runs" if exp is not None else ""
    return f"http://{host}:{port}/#/{page}?{WORKFLOW_QUERY}"


def run_ui(cmd: list[str], grace: float = 10.0) -> int:
    """Run the UI server `cmd` in its own process group until it exits; its exit code.

    Ctrl-C, SIGTERM and SIGHUP to this process are passed on to the whole group (the server and
    the job consumers it starts), which gets `grace` seconds before SIGKILL: nothing is left
    running. Then 128 + the signal's number.
    """
    from capexp.stopping import Stopped, exit_code, stop_on_signals

    child = subprocess.Popen(cmd, start_new_session=True)  # a group of its own: one signal reaches all of it
    with stop_on_signals():  # a second signal while the group stops is ignored
        try:
            return child.wait()
        except KeyboardInterrupt as e:
            _stop_group(child, signal.SIGTERM if isinstance(e, Stopped) else signal.SIGINT, grace)
            return exit_code(e)


def _stop_group(child: subprocess.Popen, signum: int, grace: float) -> None:
    try:
        os.killpg(child.pid, signum)
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    except ProcessLookupError:
        child.wait()
    try:  # the server's own children may outlive it
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
