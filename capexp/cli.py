"""The `capexp` command: a click group that only registers thin wrappers over library functions."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from capexp import __version__
from capexp.errors import CapexpError

__all__ = ["main", "cli"]

_SET = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=JSON",
    help="Override a spec value by its dotted key, e.g. --set clip_config.image_size=[50,50] (repeatable).",
)
_URI = click.option("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns).")
_EXPERIMENT = click.option("--experiment", default="capexp", show_default=True, help="MLflow experiment name.")


def _no_system_metrics(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    from capexp.tracking.system import disable_system_metrics

    if value:
        disable_system_metrics()  # in the environment, so study workers inherit it


_NO_SYSTEM_METRICS = click.option(
    "--no-system-metrics", is_flag=True, expose_value=False, callback=_no_system_metrics,
    help="Do not sample CPU, memory and GPU use into system/* metrics during training.",
)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=True)])
    logging.getLogger("capexp").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("mlflow", "alembic", "httpx", "urllib3", "transformers", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Group(click.Group):
    """Turns a CapexpError into its one-paragraph message and exit code 2, and a stop (Ctrl-C,
    SIGTERM, SIGHUP) into exit code 128 + the signal's number."""

    def invoke(self, ctx: click.Context):
        from capexp.stopping import exit_code

        try:
            return super().invoke(ctx)
        except CapexpError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as e:
            click.echo(f"stopped ({str(e) or 'SIGINT'}).", err=True)
            ctx.exit(exit_code(e))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capexp")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Run, track, search and compare image-captioning experiments."""
    _setup_logging(verbose)


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@_SET
@click.option("--strict", is_flag=True, help="Also fail (exit 2) when a data file the spec names is missing.")
def validate(spec: Path, overrides: tuple[str, ...], strict: bool) -> None:
    """Print the resolved SPEC (after `extends` and --set) as JSON."""
    from capexp.spec.checks import check_spec
    from capexp.spec.loading import load_spec, missing_paths

    resolved = load_spec(spec, overrides)
    check_spec(resolved, str(spec) + (" with --set " + " ".join(overrides) if overrides else ""))
    click.echo(resolved.model_dump_json(indent=2))
    for key, path in missing_paths(resolved):
        message = f"{spec}: `{key}` = {path} does not exist (needed by `capexp run`)."
        if strict:
            raise CapexpError(message + " Fix the path or override it with --set.")
        click.echo(f"warning: {message}", err=True)


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@_SET
@_EXPERIMENT
@_URI
@_NO_SYSTEM_METRICS
def run(spec: Path, overrides: tuple[str, ...], experiment: str, tracking_uri: str | None) -> None:
    """Train the captioner SPEC describes and track it as an MLflow run."""
    from capexp.training.run import run_spec
    from capexp.spec.loading import load_spec

    resolved = load_spec(spec, overrides)
    result = run_spec(resolved, origin=str(spec), experiment=experiment, tracking_uri=tracking_uri)
    last = result.history[-1] if result.history else {}
    click.echo(
        f"run {resolved.id} ({result.run_id}) finished: "
        + ", ".join(f"{k}={v:.4f}" for k, v in {**last, **result.best}.items() if k != "epoch_seconds")
    )


@cli.command()
@_URI
@click.option("--port", default=5000, show_default=True)
@click.option("--experiment", default="capexp", show_default=True, help="The experiment the printed link opens.")
def ui(tracking_uri: str | None, port: int, experiment: str) -> None:
    """Open the MLflow UI on the capexp store, bound to localhost, in its training view."""
    from capexp.tracking import resolve_tracking_uri
    from capexp.tracking.ui import run_ui, ui_command, ui_url

    cmd = ui_command(tracking_uri, "127.0.0.1", port)
    click.echo(f"MLflow UI on {ui_url(tracking_uri, '127.0.0.1', port, experiment)} "
               f"(store {resolve_tracking_uri(tracking_uri)}); Ctrl-C stops it.")
    raise SystemExit(run_ui(cmd))


@cli.command()
@click.option("--spec", "base", type=click.Path(path_type=Path), default=None,
              help="Base spec each trial overrides (default: experiments/quickstart.json).")
@click.option("--trials", type=int, default=20, show_default=True, help="Complete or pruned trials the study should have.")
@click.option("--name", default=None, help="Study name (default: the base spec's file name); rerun to resume.")
@click.option("--space", type=click.Path(path_type=Path), default=None, help="Search space file (default: studies/default.json).")
@click.option("--storage", default=None, help="Optuna storage: default studies/NAME.journal; a PostgreSQL URL for several machines.")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes on this machine.")
@click.option("--gpus", default=None, metavar="LIST", help=(
    "GPUs the workers share, numbered as this machine shows them, e.g. 0,2 (default: every visible GPU). "
    "Worker i sees only the (i mod G)-th of the G chosen, via CUDA_VISIBLE_DEVICES; without a GPU nothing changes."
))
@click.option("--enqueue", type=click.Path(path_type=Path), multiple=True, help="A spec to try first (repeatable).")
@click.option("--keep-models", type=int, default=None,
              help="Keep logged models (weights) of the best K trials only; the others keep metrics and curves.")
@click.option("--no-control", is_flag=True,
              help="Skip the control: the base spec's own values of the searched keys, otherwise run as the first trial.")
@click.option("--finalists", type=int, default=None, metavar="K",
              help="After the search, retrain the best K complete trials and the control at the base spec's full "
                   "budget (without the space's `budget`), on the --workers; the best mean validation objective wins. "
                   "A space of several objectives has no single best, so it refuses --finalists.")
@click.option("--finalist-seeds", type=int, default=1, show_default=True, metavar="S",
              help="Seeds per finalist (the base's seed, seed+1, ...): their spread shows what is noise.")
@click.option("--best-spec", is_flag=True,
              help="Run nothing: print the full-budget spec (--spec, default the study's base) of the finalists' "
                   "winner, or of the best trial before finalists ran (with several objectives: the --pick), as JSON.")
@click.option("--pick", default=None, metavar="RULE", help=(
    "With --best-spec on a study of several objectives: the rule that picks one member of the Pareto front "
    "(given on a study with finalists, it picks among the trials instead of taking the finalists' winner). "
    "Comma-separated clauses: bounds METRIC>=X or METRIC<=X, X a number, `best` (the front's best value of "
    "METRIC) or F*best; then at most one `min METRIC` or `max METRIC`, which picks among the members that meet "
    "every bound (default: the best of the first objective). Default rule: the first objective within 2% of its "
    "best, then the best of the second, e.g. \"cider>=0.98*best, min train_minutes\"."
))
@_SET
@_EXPERIMENT
@_URI
@_NO_SYSTEM_METRICS
def study(base: Path | None, trials: int, name: str | None, space: Path | None, storage: str | None, workers: int,
          gpus: str | None, enqueue: tuple[Path, ...], keep_models: int | None, no_control: bool, finalists: int | None,
          finalist_seeds: int, best_spec: bool, pick: str | None, overrides: tuple[str, ...], experiment: str,
          tracking_uri: str | None) -> None:
    """Optuna search over the base spec, every trial a child MLflow run; resumable and parallel."""
    from capexp.study import run_study

    if best_spec:
        from capexp.study.best import best_spec as best

        if name is None:
            raise CapexpError("--best-spec needs the study's --name.")
        click.echo(best(name, base=base, space=space, storage=storage, overrides=overrides, pick=pick).model_dump_json(indent=2))
        return
    summary = run_study(base, trials=trials, name=name, space=space, storage=storage, workers=workers,
                        experiment=experiment, enqueue=enqueue, tracking_uri=tracking_uri, overrides=overrides,
                        keep_models=keep_models, control=not no_control, finalists=finalists,
                        finalist_seeds=finalist_seeds, gpus=gpus)
    click.echo(summary.report())


@cli.command()
@click.argument("name")
@click.option("--storage", default=None, help="As `capexp study` had it (default: studies/NAME.journal).")
@click.option("--port", default=8080, show_default=True)
def dashboard(name: str, storage: str | None, port: int) -> None:
    """Serve optuna-dashboard on study NAME (its journal file or database), bound to 127.0.0.1."""
    from optuna_dashboard import run_server

    from capexp.study.storage import existing_storage

    opened = existing_storage(storage, name)
    click.echo(f"Optuna dashboard of study {name} on http://127.0.0.1:{port}/dashboard ; Ctrl-C stops it.")
    run_server(opened, host="127.0.0.1", port=port)


@cli.command()
@click.argument("run")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--beam", type=int, default=None, help="Beam size (default: the run's evaluation.beam_size).")
@click.option("--length-penalty", type=float, default=None)
@click.option("--no-repeat-ngram-size", type=int, default=None)
@click.option("--ensemble", "ensemble", multiple=True, metavar="OTHER",
              help="RUN and run OTHER decode as one model (mean next-token probabilities; repeatable). "
                   "The scores go to a run named RUN+OTHER, tagged capexp.ensemble, not to RUN.")
@click.option("--experiment", default=None, help="Where the run name is looked up (default: every experiment).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@_URI
def evaluate(run: str, split: str, beam: int | None, length_penalty: float | None, no_repeat_ngram_size: int | None,
             ensemble: tuple[str, ...], experiment: str | None, device: str | None, tracking_uri: str | None) -> None:
    """Score RUN's best checkpoint on a held-out split; log <split>_* metrics and captions to the run."""
    from capexp.evaluation.evaluate import evaluate_run

    metrics = evaluate_run(run, split=split, beam=beam, length_penalty=length_penalty,
                           no_repeat_ngram_size=no_repeat_ngram_size, ensemble=ensemble, experiment=experiment,
                           tracking_uri=tracking_uri, device=device)
    click.echo("\n".join(f"{k}: {v:.4f}" for k, v in metrics.items()))


@cli.command()
@click.argument("runs", nargs=-1)
@click.option("--experiment", default=None,
              help="MLflow experiment (default: capexp; run names and --study are looked up in every experiment).")
@click.option("--study", default=None,
              help="List this study's trials, one row each, best first (the control marked), then its finalists at "
                   "full budget and the knobs' importances (Markdown: and its plots).")
@click.option("--format", "fmt", type=click.Choice(["term", "md", "csv", "html"]), default=None,
              help="Default: from --output's suffix, else term.")
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the table to this file.")
@click.option("--only-changed", is_flag=True, help="Drop hyperparameter rows whose value never changes.")
@click.option("--metric", default=None, help="Star the best run by this metric (default: best_val_loss; for --study, the objective).")
@click.option("--ranking", is_flag=True, help="The human-score ranking table (after `capexp score`).")
@click.option("--significance", is_flag=True,
              help="BLEU-4, METEOR, CIDEr, BERTScore F1 of RUNS scored by `capexp evaluate` on one split: each "
                   "run's difference from the first with a 95% paired-bootstrap interval over the images.")
@_URI
def compare(runs: tuple[str, ...], experiment: str | None, study: str | None, fmt: str | None, output: Path | None,
            only_changed: bool, metric: str | None, ranking: bool, significance: bool, tracking_uri: str | None) -> None:
    """Compare RUNS (names or ids) side by side, as in the seed study's experimentation table."""
    from capexp.compare import compare as compare_runs

    compare_runs(runs, experiment=experiment, study=study, fmt=fmt, output=output, only_changed=only_changed,
                 metric=metric, ranking=ranking, significance=significance, tracking_uri=tracking_uri)


@cli.command()
@click.argument("scores", type=click.Path(path_type=Path))
@_EXPERIMENT
@_URI
def score(scores: Path, experiment: str, tracking_uri: str | None) -> None:
    """Import human 0/1/2 caption SCORES (image_id, model_name, caption, score) into their runs."""
    from capexp.evaluation.human_scores import import_scores

    click.echo(import_scores(scores, experiment=experiment, tracking_uri=tracking_uri).report())


@cli.command()
@click.argument("images_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--run", "runs", multiple=True, help="A run id or name whose best checkpoint captions (repeatable).")
@click.option("--experiment", default=None, help="Every run with a checkpoint in this experiment (with --run: where names are looked up).")
@click.option("--model", "models", multiple=True, help="A logged model (models:/m-...), a registered one (models:/NAME@alias) or a checkpoint folder (repeatable).")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), required=True, help="CSV: image_id, model_name, caption.")
@click.option("--ensemble", is_flag=True,
              help="The selected models decode as one (mean next-token probabilities); model_name joins theirs with '+'.")
@click.option("--beam", type=int, default=None, help="Beam size (default: each run's evaluation.beam_size).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@_URI
def caption(images_dir: Path, runs: tuple[str, ...], experiment: str | None, models: tuple[str, ...], output: Path,
            ensemble: bool, beam: int | None, batch_size: int, device: str | None, tracking_uri: str | None) -> None:
    """Caption every image in IMAGES_DIR with every selected model into one CSV."""
    from capexp.serving.folder import caption_folder, select_checkpoints

    checkpoints = select_checkpoints([*runs, *models], experiment=experiment, tracking_uri=tracking_uri)
    result = caption_folder(images_dir, checkpoints, output, beam=beam, batch_size=batch_size, device=device,
                            ensemble=ensemble)
    click.echo(f"{result.images} images x {len(result.models)} models -> {result.output} "
               f"({result.seconds:.1f}s; {len(result.skipped)} unreadable files skipped)")


@cli.command()
@click.argument("images")
@click.option("--run", "runs", multiple=True, help="A run id or name whose best checkpoint captions (repeatable).")
@click.option("--experiment", default=None, help="Every run with a checkpoint in this experiment (with --run: where names are looked up).")
@click.option("--model", "models", multiple=True, help="A logged model (models:/m-...), a registered one (models:/NAME@alias) or a checkpoint folder (repeatable).")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The HTML page to write.")
@click.option("--sheet", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the scoring sheet (image_id, model_name, caption, score blank) for `capexp score`.")
@click.option("--blind", is_flag=True, help="Shuffle each image's captions, hide model names (the sheet names runs by id).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --blind shuffle.")
@click.option("--metric", type=click.Choice(["bertscore_f1", "bleu4"]), default="bertscore_f1", show_default=True,
              help="Per-image score against the references (a split's images only).")
@click.option("--max-images", type=int, default=100, show_default=True, help="The first N images of a split or folder.")
@click.option("--no-log", is_flag=True, help="Do not log the page and the sheet to the runs as gallery/ artifacts.")
@click.option("--beam", type=int, default=None, help="Beam size (default: each run's evaluation.beam_size).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@_URI
def gallery(images: str, runs: tuple[str, ...], experiment: str | None, models: tuple[str, ...], output: Path,
            sheet: Path | None, blind: bool, seed: int, metric: str, max_images: int, no_log: bool, beam: int | None,
            batch_size: int, device: str | None, tracking_uri: str | None) -> None:
    """Every model's caption of IMAGES (a folder, or train/val/test of the first run's data) on one HTML page."""
    from capexp.gallery import make_gallery
    from capexp.tracking import model_sources

    sources = model_sources([*runs, *models], experiment=experiment, tracking_uri=tracking_uri)
    made = make_gallery(images, sources, output, sheet=sheet, blind=blind, seed=seed, log_artifacts=not no_log,
                        experiment=experiment, tracking_uri=tracking_uri, metric=metric, max_images=max_images,
                        beam=beam, batch_size=batch_size, device=device)
    g = made.gallery
    click.echo(f"{len(g.images)} images x {len(g.models)} models -> {made.page}"
               + (f" and {made.sheet}" if made.sheet else "")
               + (f"; logged to {len(made.logged_to)} run(s) as gallery/" if made.logged_to else ""))


@cli.command()
@click.argument("run")
@click.option("--name", required=True, help="Registered model name.")
@click.option("--alias", default="champion", show_default=True)
@click.option("--experiment", default=None, help="Where the run name is looked up (default: every experiment).")
@_URI
def register(run: str, name: str, alias: str, experiment: str | None, tracking_uri: str | None) -> None:
    """Register RUN's logged model (its best checkpoint as an MLflow pyfunc model) under NAME@ALIAS."""
    from capexp.serving.register import register_run
    from capexp.tracking import resolve_tracking_uri

    model = register_run(run, name, alias=alias, experiment=experiment, tracking_uri=tracking_uri)
    click.echo(f"registered {model.model_uri} (version {model.version})\nserve it with:\n"
               f"  MLFLOW_TRACKING_URI={resolve_tracking_uri(tracking_uri)} mlflow models serve "
               f"-m models:/{name}@{alias} --env-manager local -h 127.0.0.1 -p 5001")


@cli.command("backbones")
def backbones_cmd() -> None:
    """List the backbone presets (any hub id or local folder works too)."""
    from capexp.backbones import list_backbones

    click.echo(json.dumps(list_backbones(), indent=2))


@cli.command("data")
@click.argument("name", required=False)
@click.option("--to", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder to fetch into (default: $CAPEXP_DATA, else ./data).")
@click.option("--from", "sources", type=click.Path(path_type=Path, dir_okay=False), multiple=True,
              help="An archive you already have, instead of downloading (repeatable).")
@click.option("--mirror", default=None, help="Base URL serving the data set's archive files by name.")
@click.option("--keep-archives", is_flag=True, help="Keep the downloaded archives in TO/.downloads.")
def data_cmd(name: str | None, to: Path | None, sources: tuple[Path, ...], mirror: str | None, keep_archives: bool) -> None:
    """Fetch data set NAME into the layout its spec source reads (without NAME: list them)."""
    from capexp.data.fetch import DATASETS, fetch_dataset

    if name is None:
        for d in DATASETS.values():
            click.echo(f"{d.name}\n  {d.what}\n  {d.size}; {d.licence}")
        return
    dest = fetch_dataset(name, to or Path(os.environ.get("CAPEXP_DATA") or "data"), sources, mirror, keep_archives)
    click.echo(f"{name} is ready in {dest}.\n{DATASETS[name].usage(dest)}")


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="capexp")


if __name__ == "__main__":
    main()
