"""Training: where a spec becomes a run.

`run` holds `run_spec` (data, backbones, the MLflow run, features, the model, the epochs) and the
run recorder; `cross_entropy` the cross-entropy epochs and per-epoch validation; `self_critical`
the self-critical phase after them; `outputs` the files a run writes beside its metrics.
"""
