"""`capexp compare --significance`: the paired bootstrap over evaluated images, its statistics and its refusals."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from capexp.cli import cli
from capexp.errors import CapexpError
from capexp.evaluation.significance import Scored, bootstrap, corpus_bleu4, paired, statistic, statistics

SUBJECTS = ["a dog", "two children", "a man", "a woman", "a cat", "three birds", "a boy", "a girl"]
ACTIONS = ["runs on", "plays in", "sits on", "walks along", "jumps over", "stands near"]
PLACES = ["the grass", "the snow", "a bench", "the beach", "a fence", "the water", "a road"]


def _scored(captions: list[str], references: list[list[str]], decoding: str = "beam=3", seed: int = 0) -> Scored:
    rng = random.Random(seed)
    return Scored("val", decoding, "all-MiniLM-L6-v2", [f"img{k}" for k in range(len(captions))], captions,
                  references, [rng.uniform(0.1, 0.4) for _ in captions], [rng.uniform(0.5, 0.9) for _ in captions])


def _images(n: int) -> list[list[str]]:
    """`n` images with five references each: the first names the picture, the others vary it."""
    rng = random.Random(1)
    out = []
    for _ in range(n):
        s, a, p = rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES)
        out.append([f"{s} {a} {p}.", f"{s} {a} {p}", f"{s} is outside", f"{s} {rng.choice(ACTIONS)} {p}",
                    f"there is {s} near {p}"])
    return out


def test_a_run_against_itself_differs_by_exactly_zero() -> None:
    refs = _images(20)
    run = _scored([r[1] for r in refs], [r[1:] for r in refs])
    # the same evaluation logged with its images in another order is paired image by image
    order = list(range(20))
    random.Random(2).shuffle(order)
    shuffled = Scored("val", run.decoding, run.bertscore_model, [run.image_ids[k] for k in order],
                      [run.captions[k] for k in order], [run.references[k] for k in order],
                      [run.meteor[k] for k in order], [run.bertscore_f1[k] for k in order])
    differences = bootstrap(statistics(paired(["a", "a copy"], [run, shuffled])))
    assert {d.metric for d in differences} == {"bleu4", "meteor", "cider", "bertscore_f1"}
    for d in differences:
        assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0), d.metric
        assert not d.significant


def test_constant_captions_are_significantly_worse_and_values_match_pycocoevalcap() -> None:
    refs = _images(40)
    good = _scored([r[0] for r in refs], [r[1:] for r in refs])  # the held-out human caption of each image
    constant = _scored(["a person is in a picture"] * 40, [r[1:] for r in refs], seed=1)
    runs = statistics([good, constant])
    by = {(d.metric, d.run): d for d in bootstrap(runs)}
    for metric in ("bleu4", "cider"):
        d = by[metric, 1]
        assert d.significant and d.high < 0 < by[metric, 0].value, metric
        assert d.low <= d.difference <= d.high
    # the full-sample values are pycocoevalcap's (the scores `capexp evaluate` logs) on the same tokens
    gts = {k: [r.rstrip(".") for r in image[1:]] for k, image in enumerate(refs)}
    res = {k: [image[0].rstrip(".")] for k, image in enumerate(refs)}
    assert by["bleu4", 0].value == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], rel=1e-12)
    assert by["cider", 0].value == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12)
    assert by["meteor", 0].value == pytest.approx(np.mean(good.meteor))


def test_bleu4_of_one_resample_by_hand() -> None:
    references = [["a b c d e"], ["a b c d"], ["x y z w"], ["a b"], ["p q r s t u"]]
    captions = ["a b c d e", "a b c x", "x y z w v", "a b", "p q"]
    (run,) = statistics([Scored("val", "beam=1", "m", list("01234"), captions, references, None, [0.5] * 5)])
    # image by image: length, closest reference length, n-grams n=1..4, clipped matches n=1..4
    assert run.bleu.tolist() == [[5, 5, 5, 4, 3, 2, 5, 4, 3, 2], [4, 4, 4, 3, 2, 1, 3, 2, 1, 0],
                                 [5, 4, 5, 4, 3, 2, 4, 3, 2, 1], [2, 2, 2, 1, 0, 0, 2, 1, 0, 0],
                                 [2, 6, 2, 1, 0, 0, 2, 1, 0, 0]]
    # a resample that draws image 0 twice, images 1 and 4 once, images 2 and 3 never:
    # length 5+5+4+2 = 16 against 5+5+4+6 = 20; n-grams 16/12/8/5, matches 15/11/7/4
    expected = (15 / 16 * 11 / 12 * 7 / 8 * 4 / 5) ** 0.25 * math.exp(1 - 20 / 16)
    assert statistic(run, "bleu4", np.array([[2.0, 1, 0, 0, 1]]))[0] == pytest.approx(expected, rel=1e-9)
    assert corpus_bleu4(np.array([4, 4, 4, 3, 2, 1, 4, 3, 2, 1.0])) == pytest.approx(1.0)


def test_runs_scored_differently_are_refused_with_what_differs() -> None:
    refs = _images(6)
    run = _scored([r[0] for r in refs], [r[1:] for r in refs])
    beam1 = _scored([r[0] for r in refs], [r[1:] for r in refs], decoding="beam=1")
    with pytest.raises(CapexpError, match=r"runs 'a' and 'b' were evaluated with different decoding \(beam=3 "
                                          r"against beam=1\).*--beam"):
        paired(["a", "b"], [run, beam1])
    fewer = _scored([r[0] for r in refs[:4]], [r[1:] for r in refs[:4]])
    with pytest.raises(CapexpError, match=r"different val images \(6 and 4, 2 not in both\)"):
        paired(["a", "b"], [run, fewer])


def test_cli_on_an_evaluated_run(tracking_uri: str, tiny) -> None:
    """End to end: `capexp evaluate` logs the per-image record, and `compare --significance` reads it back
    (its values are the ones evaluate logged); a run never evaluated is refused in one line, exit 2."""
    from capexp.evaluation.evaluate import evaluate_run

    result = tiny.run("id=tiny", "evaluation.coco_metrics=true", "data_paths.num_val=12", "evaluation.max_images=12",
                      tracking_uri=tracking_uri)
    metrics = evaluate_run("tiny", split="val", beam=2)
    runner = CliRunner()
    same = runner.invoke(cli, ["compare", "tiny", result.run_id, "--significance"], env={"COLUMNS": "80"})
    assert same.exit_code == 0, same.output
    lines = same.output.splitlines()
    assert lines[0].startswith("12 val images, decoded beam=2")
    assert max(map(len, lines)) <= 80 and " *" not in same.output
    for label, name in (("BLEU-4", "bleu4"), ("METEOR", None), ("CIDEr", "cider"), ("BERTScore F1", "bertscore_f1")):
        (first,) = [line for line in lines if line.startswith(label)]
        if name is not None:  # recomputed from the logged captions: what evaluate scored
            assert float(first.split()[-1]) == pytest.approx(metrics[f"val_{name}"], abs=6e-5), label
        second = lines[lines.index(first) + 1]
        assert second.split()[1:] == [first.split()[-1], "+0.0000", "[+0.0000,", "+0.0000]"], label
    client = MlflowClient(tracking_uri)
    bare = client.create_run(client.get_run(result.run_id).info.experiment_id, run_name="bare").info.run_id
    refused = runner.invoke(cli, ["compare", "tiny", bare, "--significance"])
    assert refused.exit_code == 2
    assert f"run {bare!r} has no per-image evaluation" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
