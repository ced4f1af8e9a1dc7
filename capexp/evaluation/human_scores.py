"""`capexp score`: human 0/1/2 caption scores imported into the runs that made the captions.

The file is the seed's `inference_scores.csv` format: columns `image_id, model_name, caption,
score`. `model_name` is a run name, a run id, or the seed's checkpoint file name
`best_model_<RUN NAME>.pkl`. Each matched run gets the metrics `human_total` and
`human_accuracy` (total x 100 / (images x 2)) and its rows as the artifact
`human_scores/<file name>`.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from capexp.errors import CapexpError
from capexp.tracking import DEFAULT_EXPERIMENT, use_store

__all__ = ["COLUMNS", "ScoreRow", "RunScores", "ScoreImport", "read_scores", "run_name_of", "import_scores"]

COLUMNS = ("image_id", "model_name", "caption", "score")
_CHECKPOINT = re.compile(r"^(?:.*[/\\])?best_model_(?P<name>.+)\.(?:pkl|pt|pth|safetensors)$")


@dataclass(frozen=True)
class ScoreRow:
    line: int  # line number in the file (the header is line 1)
    image_id: str
    model_name: str
    caption: str
    score: int


@dataclass
class RunScores:
    """The scores matched to one run."""

    run_id: str
    run_name: str
    rows: list[ScoreRow]

    @property
    def total(self) -> int:
        return sum(r.score for r in self.rows)

    @property
    def images(self) -> int:
        return len({r.image_id for r in self.rows})

    @property
    def accuracy(self) -> float:
        """Share of the best possible total (2 per image), in percent."""
        return self.total * 100 / (self.images * 2)


@dataclass
class ScoreImport:
    """What `import_scores` did: scores per run, and what it could not use."""

    path: Path
    runs: list[RunScores]
    unmatched: dict[str, int] = field(default_factory=dict)  # model_name -> rows
    problems: list[str] = field(default_factory=list)  # malformed or duplicate rows, skipped

    def report(self) -> str:
        """A human-readable summary: one line per run, then everything skipped."""
        lines = [
            f"{r.run_name} (run {r.run_id[:8]}): human_total {r.total}, human_accuracy "
            f"{r.accuracy:.0f}% over {r.images} images"
            for r in self.runs
        ]
        if self.unmatched:
            lines.append(f"Not imported, no run matches these model_name values in {self.path}:")
            lines += [f"  {name} ({n} rows)" for name, n in self.unmatched.items()]
            lines.append("  Use a run name, a run id or best_model_<RUN NAME>.pkl, or pass --experiment.")
        if self.problems:
            lines.append(f"Skipped {len(self.problems)} rows of {self.path}:")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def read_scores(path: str | Path) -> tuple[list[ScoreRow], list[str]]:
    """The valid rows of a scores CSV, and one message per malformed or duplicate row."""
    path = Path(path)
    fix = f"columns {', '.join(COLUMNS)}, one row per image and model, score 0, 1 or 2"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CapexpError(f"Scores file {path} does not exist. Check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CapexpError(f"Cannot read scores file {path} ({e}). It must be a UTF-8 CSV with {fix}.") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CapexpError(
            f"{path}, row 1 (header): missing column(s) {', '.join(missing)}; found "
            f"{', '.join(reader.fieldnames or []) or 'nothing'}. The file needs a header row with {fix}."
        )
    rows: list[ScoreRow] = []
    problems: list[str] = []
    blank: list[int] = []  # rows with a caption to score and no score yet
    seen: dict[tuple[str, str], int] = {}
    try:
        for record in reader:
            line = reader.line_num
            values = {c: (record.get(c) or "").strip() for c in COLUMNS}
            if values["image_id"] and values["model_name"] and not values["score"]:
                blank.append(line)
                continue
            empty = [c for c in ("image_id", "model_name", "score") if not values[c]]
            if empty:
                problems.append(f"row {line}: empty {', '.join(empty)}")
                continue
            if values["score"] not in ("0", "1", "2"):
                problems.append(f"row {line}: score {values['score']!r} is not 0, 1 or 2")
                continue
            key = (values["image_id"], values["model_name"])
            if key in seen:
                first = seen[key]
                problems.append(f"row {line}: {key[1]} already scored {key[0]} on row {first}; kept row {first}")
                continue
            seen[key] = line
            rows.append(
                ScoreRow(line, values["image_id"], values["model_name"], values["caption"], int(values["score"]))
            )
    except csv.Error as e:
        raise CapexpError(
            f"{path}, row {reader.line_num}: not valid CSV ({e}). Fix that row; the file needs {fix}."
        ) from None
    if blank:
        shown = ", ".join(map(str, blank[:20])) + (f" and {len(blank) - 20} more" if len(blank) > 20 else "")
        raise CapexpError(
            f"{path}: {len(blank)} row(s) have no score yet: rows {shown}. Fill each with 0, 1 or 2 "
            f"(or delete the rows nobody scored) and run `capexp score` again; nothing was imported."
        )
    if not rows:
        first = f" The first problem: {problems[0]}." if problems else ""
        raise CapexpError(f"{path} has no valid score rows.{first} The file needs {fix}.")
    return rows, problems


def run_name_of(model_name: str) -> str:
    """The run name in a model name: `best_model_<NAME>.pkl` (seed checkpoint) -> NAME."""
    m = _CHECKPOINT.match(model_name)
    return m.group("name") if m else model_name


def _write_rows(path: Path, rows: list[ScoreRow]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows([r.image_id, r.model_name, r.caption, r.score] for r in rows)


def import_scores(
    path: str | Path, *, experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None
) -> ScoreImport:
    """Log `human_total`, `human_accuracy` and the scored rows (artifact) to each run the
    file's `model_name`s match in `experiment` of the store at `tracking_uri`; unmatched
    names and bad rows are returned."""
    from mlflow import MlflowClient

    from capexp.tracking import find_runs

    path = Path(path)
    rows, problems = read_scores(path)
    use_store(tracking_uri)
    names = list(dict.fromkeys(r.model_name for r in rows))
    lookup = {name: run_name_of(name) for name in names}
    found, _ = find_runs([*names, *lookup.values()], experiment)
    by_run: dict[str, RunScores] = {}
    unmatched: dict[str, int] = {}
    for row in rows:
        run = found.get(row.model_name) or found.get(lookup[row.model_name])
        if run is None:
            unmatched[row.model_name] = unmatched.get(row.model_name, 0) + 1
            continue
        run_id = run.info.run_id
        by_run.setdefault(run_id, RunScores(run_id, run.info.run_name or run_id, [])).rows.append(row)
    if not by_run:
        raise CapexpError(
            f"No model_name in {path} matches a run in experiment {experiment!r} (tried "
            f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}). Pass the experiment that holds "
            f"the runs with --experiment, or write run names, run ids or best_model_<RUN NAME>.pkl."
        )
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        for scores in by_run.values():
            client.log_metric(scores.run_id, "human_total", scores.total)
            client.log_metric(scores.run_id, "human_accuracy", scores.accuracy)
            local = Path(tmp) / scores.run_id / path.name
            local.parent.mkdir()
            _write_rows(local, scores.rows)
            client.log_artifact(scores.run_id, str(local), artifact_path="human_scores")
    return ScoreImport(path=path, runs=list(by_run.values()), unmatched=unmatched, problems=problems)
