"""System metrics (CPU, memory, disk, network; GPU where one exists) sampled during each run by
MLflow's own monitor, logged as `system/*` metrics (`system/cpu_utilization_percentage`,
`system/system_memory_usage_megabytes`, `system/gpu_0_utilization_percentage`, ...).

On by default; `capexp run --no-system-metrics` (or `CAPEXP_SYSTEM_METRICS=0` in the
environment, which study workers inherit) turns it off. MLflow samples every
`MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` seconds: capexp makes that 5 unless it is set, so a
one-minute quickstart gets a dozen samples (MLflow's own default, 10 s, misses short runs).
"""

from __future__ import annotations

import logging
import os

__all__ = ["ENV_SYSTEM_METRICS", "SAMPLING_INTERVAL", "disable_system_metrics", "system_metrics"]

ENV_SYSTEM_METRICS = "CAPEXP_SYSTEM_METRICS"
SAMPLING_INTERVAL = 5  # seconds, unless MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says otherwise
_INTERVAL_ENV = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"


def disable_system_metrics() -> None:
    """No system metrics for runs this process (and processes it starts) begins from now on."""
    os.environ[ENV_SYSTEM_METRICS] = "0"


def system_metrics() -> bool:
    """Whether a run starting now logs system metrics (pass to `mlflow.start_run(log_system_metrics=...)`)."""
    if os.environ.get(ENV_SYSTEM_METRICS, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    os.environ.setdefault(_INTERVAL_ENV, str(SAMPLING_INTERVAL))
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop INFO lines
    return True
