"""Training: where a spec becomes a tracked run.

It owns `run_spec` (bad input refused before the MLflow run exists, then data, features, model, epochs
and everything a run logs, kept when it fails), the cross-entropy epochs with their per-epoch validation
and progress line, the self-critical phase after them, the optimizer both share, and the files a run
writes beside its metrics.
"""
