"""`capexp compare`: the seed study's experimentation table rebuilt from six tracked runs, and beyond."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from capexp.compare import compare
from capexp.errors import CapexpError
from capexp.spec.schema import Spec
from capexp.spec.loading import flatten, load_spec
from capexp.tracking import TAG_PRUNED, TAG_STUDY, TAG_TRIAL, experiment_id, param_value, use_store

REPO = Path(__file__).resolve().parents[1]
SEED_IDS = [
    "20250725_125558",
    "20250725_135939",
    "20250725_174616",
    "20250725_233058",
    "20250726_111600",
    "20250726_183853",
]
BEST = "20250725_233058"


def _seed_text() -> str:
    return (Path(__file__).resolve().parent / "fixtures" / "seed_study.md").read_text()


def _table_lines(text: str, first_cell: str) -> list[str]:
    """The lines of the Markdown table whose header starts with `first_cell`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def _seed_specs(seed_text: str) -> list[Spec]:
    """The six seed runs: SEED's JSON config with each column of its table applied."""
    base = json.loads(re.search(r"```json\n(.*?)```", seed_text, re.S).group(1))
    table = [_cells(line) for line in _table_lines(seed_text, "Model_ID")]
    ids = [h.removesuffix(" (best)") for h in table[0][1:]]
    specs = []
    for col, run_id in enumerate(ids, start=1):
        data = json.loads(json.dumps(base))
        data["id"] = run_id
        for row in table[2:]:
            if row[0] == "Notes":
                data["notes"] = row[col]
                continue
            section, key = row[0].split(".")
            data[section][key] = json.loads(row[col].lstrip("↑↓ ").strip("*"))
        specs.append(Spec.model_validate(data))
    return specs


def _log_run(
    client,
    experiment: str,
    spec: Spec,
    start: int,
    val_losses: list[float],
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log `spec` the way `capexp run` does: params by dotted key, notes, per-epoch metrics."""
    from mlflow.entities import Metric, Param

    run = client.create_run(
        experiment_id(experiment), start_time=start, run_name=spec.id,
        tags={"mlflow.note.content": spec.notes, **(tags or {})},
    )
    run_id = run.info.run_id
    params = [Param(k, param_value(v)) for k, v in flatten(spec).items()]
    history = [Metric("val_loss", v, start + e, e) for e, v in enumerate(val_losses, start=1)]
    history += [Metric("bertscore_f1", 0.9 - v / 10, start + e, e) for e, v in enumerate(val_losses, start=1)]
    history += [Metric(k, v, start, 0) for k, v in (metrics or {}).items()]
    client.log_batch(run_id, metrics=history, params=params)
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One SQLite store for the module, holding the seed's six runs in experiment `capexp`;
    yields {run name: run id}."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        use_store(uri)
        client = MlflowClient()
        ids = {}
        for i, spec in enumerate(_seed_specs(_seed_text())):
            # The best run (by val loss) is the one SEED marks "(best)".
            final = 1.5 if spec.id == BEST else 2.0 + i / 10
            ids[spec.id] = _log_run(client, "capexp", spec, 1_000_000 * (i + 1), [3.0, 2.5, final, final + 0.01])
        yield ids


def _render(fmt: str, **kwargs) -> str:
    return compare(fmt=fmt, console=Console(file=io.StringIO(), width=80), **kwargs)


def test_markdown_is_seed_table(store: dict[str, str]) -> None:
    seed = _table_lines(_seed_text(), "Model_ID")
    lines = _render("md").splitlines()
    assert lines[: len(seed)] == seed
    metric_rows = [_cells(line)[0] for line in lines[len(seed):]]
    assert metric_rows == ["best_val_loss", "best_epoch", "bertscore_f1"]
    best_val_loss = _cells(lines[len(seed)])[1:]
    assert best_val_loss[3] == "1.5000" and best_val_loss[0] == "2.0000"
    # Per-epoch metrics are read at the best epoch (3 here), not at the last one.
    assert _cells(lines[len(seed) + 2])[4] == "0.7500"


def test_project_seed_specs_give_seed_table(store: dict[str, str]) -> None:
    """The six seed specs shipped in experiments/ (which differ in their checkpoint paths)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for i, run_id in enumerate(SEED_IDS):
        spec = load_spec(REPO / "experiments" / f"{run_id}.json")
        _log_run(client, "seed_files", spec, i + 1, [2.0 - (run_id == BEST)])
    seed = _table_lines(_seed_text(), "Model_ID")
    lines = _render("md", experiment="seed_files").splitlines()
    assert lines[: len(seed)] == seed
    assert lines[len(seed)] == "| best_val_loss | 2.0000 | 2.0000 | 2.0000 | 1.0000 | 2.0000 | 2.0000 |"


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "strong" and self._cell is not None:
            self._cell += "**"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None
        elif tag == "strong" and self._cell is not None:
            self._cell += "**"

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data


def test_csv_and_html_carry_markdown_cells(store: dict[str, str]) -> None:
    md_lines = _render("md").splitlines()
    md = [_cells(line) for line in md_lines[:1] + md_lines[2:]]
    assert list(csv.reader(io.StringIO(_render("csv")))) == md
    parser = _Cells()
    parser.feed(_render("html"))
    assert parser.rows == md
    assert any("↑ **[224, 224]**" in row for row in md)


def test_terminal_view_fits_80_columns(store: dict[str, str]) -> None:
    console = Console(file=io.StringIO(), width=80, record=True)
    text = compare(console=console)
    shown = console.export_text()
    assert text == shown
    assert max(len(line) for line in shown.splitlines()) <= 80
    for run_id in SEED_IDS:
        assert run_id in shown  # never folded
    assert "(best)" in shown and "↑ [224, 224]" in shown and "↓ 6" in shown
    words = set(shown.split())
    assert words >= set("Minimalist model to validate the pipeline's functionality".split())


def test_only_changed_drops_constant_rows(store: dict[str, str]) -> None:
    rows = [_cells(line)[0] for line in _render("md", only_changed=True).splitlines()[2:]]
    assert rows[:5] == [
        "clip_config.image_size",
        "gpt2_config.visual_tokens_length",
        "gpt2_config.n_layers_to_freeze",
        "training_config.subset_ratio",
        "Notes",
    ]


def test_runs_in_given_order_by_name_or_id(store: dict[str, str]) -> None:
    lines = _render("md", runs=[store["20250726_183853"], "20250725_125558"]).splitlines()
    assert _cells(lines[0]) == ["Model_ID", "20250726_183853", "20250725_125558 (best)"]
    row = dict((c[0], c[1:]) for c in map(_cells, lines[2:]))
    assert row["clip_config.image_size"] == ["[224, 224]", "↓ **[50, 50]**"]
    assert row["gpt2_config.visual_tokens_length"] == ["4", "↓ **2**"]


def test_metric_picks_the_starred_run(store: dict[str, str]) -> None:
    header = _cells(_render("md", metric="bertscore_f1").splitlines()[0])
    assert [h for h in header if h.endswith(" (best)")] == [f"{BEST} (best)"]
    header = _cells(_render("md", metric="best_epoch").splitlines()[0])
    assert header[1:] == [f"{i} (best)" for i in SEED_IDS[:5]] + [SEED_IDS[5]]  # ties all starred
    with pytest.raises(CapexpError, match="bleu4.*bertscore_f1, best_epoch, best_val_loss"):
        _render("md", metric="bleu4")


def test_unknown_run_is_an_error(store: dict[str, str]) -> None:
    with pytest.raises(CapexpError, match="'nope'"):
        _render("md", runs=["20250725_125558", "nope"])


def test_differing_keys_lists_and_missing_values(store: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    a = Spec(id="a", notes="plain | piped")
    b = Spec(id="b", clip_config={"model": "efficientnet-lite0", "image_size": [256, 192]})
    _log_run(client, "variants", a, 1, [1.0])
    run_b = _log_run(client, "variants", b, 2, [0.5])
    client.log_param(run_b, "extra.knob", "3")
    rows = {c[0]: c[1:] for c in map(_cells, _render("md", experiment="variants").splitlines()[2:])}
    assert rows["clip_config.image_size"] == ["[224, 224]", "**[256, 192]**"]  # mixed: no arrow
    assert rows["clip_config.model"] == ["openai/clip-vit-base-patch32", "**efficientnet-lite0**"]
    assert rows["extra.knob"] == ["—", "**3**"]
    assert "gpt2_config.model" not in rows and "seed" not in rows
    assert rows["Notes"] == ["plain \\| piped", ""]
    assert "plain | piped," in _render("csv", experiment="variants")


def _study_parent(client, name: str, space: dict[str, str]) -> str:
    """A study's parent run in experiment `studies`, maximizing bertscore_f1 over `space` (key -> param JSON)."""
    parent = client.create_run(experiment_id("studies"), run_name=name, tags={TAG_STUDY: name}).info.run_id
    client.log_param(parent, "objective.metric", "bertscore_f1")
    client.log_param(parent, "objective.direction", "maximize")
    for key, param in space.items():
        client.log_param(parent, f"space.{key}", param)
    return parent


def test_study_trials_one_row_each_best_first_with_pruned_marked(store: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    parent = _study_parent(client, "s1", {"gpt2_config.visual_tokens_length": '{"type": "int", "low": 1, "high": 3}',
                                          "training_config.learning_rate": '{"choices": [0.0003, 0.001]}'})
    # bertscore_f1 = 0.9 - val_loss / 10 each epoch: best epochs 0.82, 0.85 (pruned), 0.87.
    for i, (val_losses, pruned) in enumerate([([1.0, 0.8], False), ([0.5], True), ([0.6, 0.3, 0.5], False)]):
        spec = Spec(id=f"s1-{i:03d}", gpt2_config={"visual_tokens_length": i + 1},
                    training_config={"learning_rate": 0.0003 if i else 0.001})
        tags = {TAG_STUDY: "s1", TAG_TRIAL: str(i), "mlflow.parentRunId": parent, **({TAG_PRUNED: "true"} if pruned else {})}
        _log_run(client, "studies", spec, 10 + i, val_losses, tags=tags)
    lines = _render("md", study="s1").splitlines()
    # The searched knobs in the seed table's order, named as the progress lines name them.
    assert _cells(lines[0]) == ["#", "k", "lr", "bertscore_f1", "state", "epochs", "min"]
    rows = [_cells(line)[:6] for line in lines[2:]]
    assert rows == [
        ["**2**", "3", "0.0003", "0.8700", "**best**", "3"],
        ["0", "1", "0.001", "0.8200", "complete", "2"],
        ["1", "2", "0.0003", "0.8500", "pruned", "1"],  # stopped early: never best, listed last
    ]
    # Ranked by another metric on request, shown beside the objective.
    lines = _render("md", study="s1", metric="val_loss").splitlines()
    assert _cells(lines[0])[3:5] == ["bertscore_f1", "best_val_loss"]
    assert [_cells(line)[0] for line in lines[2:]] == ["**2**", "0", "1"]
    # Study runs stay out of the experiment's ordinary comparison.
    with pytest.raises(CapexpError, match="no runs to compare"):
        _render("md", experiment="studies")
    with pytest.raises(CapexpError, match="Studies there: s1"):
        _render("md", study="s2")


def test_study_trials_show_a_searched_section_by_its_first_field(store: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    parent = _study_parent(client, "s3", {"training_config.scst": '{"choices": [null, {"epochs": 2}]}',
                                          "clip_config.train_last_blocks": '{"choices": [0, 1]}'})
    for i, scst in enumerate([None, {"epochs": 2}]):  # logged as training_config.scst, or field by field
        spec = Spec(id=f"s3-{i:03d}", training_config={"scst": scst}, clip_config={"train_last_blocks": i})
        _log_run(client, "studies", spec, 10 + i, [1.0 - i / 10],
                 tags={TAG_STUDY: "s3", TAG_TRIAL: str(i), "mlflow.parentRunId": parent})
    lines = _render("md", study="s3").splitlines()
    assert _cells(lines[0])[:3] == ["#", "blocks", "scst"]
    assert [_cells(line)[1:3] for line in lines[2:]] == [["1", "2"], ["0", "None"]]  # 2 self-critical epochs; none


def test_output_file_format_from_suffix(store: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "tables" / "seed.html"
    text = compare(output=out, console=Console(file=io.StringIO()))
    assert out.read_text() == text and text.startswith("<table")
