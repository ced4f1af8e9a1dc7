"""Optuna studies over capexp specs: the seed's hand-tuning as a search one can stop, resume and spread.

Each trial is an ordinary `run_spec` of the base spec with the sampled values set by their dotted
keys; it reports every epoch to the pruner and is a child of the study's MLflow parent run.
Studies live in Optuna storage (a journal file under `studies/` by default, PostgreSQL for several
machines), so running the same command again resumes: it retries trials whose worker died and
runs only the trials still missing. When it ends, the parent run holds the best trial, a table
of all trials and the Optuna plots.

`search` is the command; `plan` what its processes share; `storage` the Optuna storage;
`models` which trials keep their logged models;
`trials` the objective and worker processes; `liveness` dead workers; `report` the parent run;
`control` the base spec's own values, run first; `finalists` the best trials and the control
retrained at full budget, with the fidelity check; `child_runs` how both resume.
"""

from capexp.study.plan import StudySummary
from capexp.study.search import default_base, run_study
from capexp.study.storage import open_storage
from capexp.tracking import TAG_STUDY_ROLE, TAG_TRIAL

__all__ = ["TAG_TRIAL", "TAG_STUDY_ROLE", "StudySummary", "run_study", "open_storage", "default_base"]
