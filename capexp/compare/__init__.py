"""`capexp compare`: the seed study's experimentation and ranking tables, rebuilt from MLflow.

`records` reads runs into `RunRecord`s, `table` builds the table model (`Comparison`,
`Ranking`), `finalist_table` a study's finalists at full budget, `render` lays it out as
Markdown, CSV, HTML or terminal text, and `compare_runs` is what the CLI calls.
"""

from capexp.compare.compare_runs import compare
from capexp.compare.records import RunRecord, load_runs, load_study
from capexp.compare.render import FORMATS, render, terminal_tables
from capexp.compare.table import METRIC_ROWS, SEED_ROWS, Cell, Comparison, Ranking, build_comparison, build_ranking
from capexp.tracking import find_runs

__all__ = [
    "FORMATS", "SEED_ROWS", "METRIC_ROWS", "Cell", "RunRecord", "Comparison", "Ranking", "find_runs",
    "load_runs", "load_study", "build_comparison", "build_ranking", "render", "terminal_tables", "compare",
]
