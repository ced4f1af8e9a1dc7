"""Fuzzing spec loading: mutated seed specs end in a valid spec or a CapexpError, never a traceback.

A seeded generator mutates the quickstart and the six seed experiments (dropped keys, wrong
types, huge, negative and non-finite numbers, unicode, deep nesting, truncated or binary
files, bad `extends`, bad `--set` strings). Every case goes through `load_spec`; every 20th
also through `capexp validate`, which must exit 0 or 2 without a traceback.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from capexp.cli import cli
from capexp.errors import CapexpError
from capexp.spec.schema import Spec
from capexp.spec.loading import load_spec

REPO = Path(__file__).resolve().parents[1]
SEEDS = [REPO / "experiments" / "quickstart.json", *sorted((REPO / "experiments").glob("2025????_??????.json"))]
CASES = int(os.environ.get("CAPEXP_FUZZ_CASES", "2000"))
CLI_EVERY = 20

WEIRD: list[Any] = [
    None, True, False, 0, -1, -(2**63), 2**64, 10**400, 1e308, -1e308, 1e-320, float("inf"), float("-inf"), float("nan"),
    "", " ", "NaN", "Infinity", "é🙂\u202e\x00", "../../etc/passwd", "${NOPE_NOT_SET}", "$HOME/x", "~nobody/x",
    "a" * 5000, [], [1], [1, 2, 3], [[64, 64]], {}, {"source": "coco"}, {"source": "🙂"}, {"source": None}, {"a": {"b": 1}},
    [None, None], ["64", "64"], [64.5, 64.5], [1e999, 1e999],
]
KEYS = ["id", "notes", "seed", "extends", "clip_config", "gpt2_config", "data_paths", "training_config", "evaluation",
        "visual_tokens_length", "source", "image_size", "learning_rate", "best_metric", "model", "🙂", ""]


def _weird(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(WEIRD))  # a fresh object: later mutations must not make cycles


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if len(prefix) > 6:  # below a deep nest made by an earlier mutation
        return out
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


def _mutate(rng: random.Random, data: Any) -> Any:
    """One random change to a JSON value (a dict or list is changed in place; the root may be replaced)."""
    target_path = rng.choice(_paths(data))
    parent_path, last = target_path[:-1], target_path[-1] if target_path else None
    kind = rng.randrange(8)
    if not target_path:
        return rng.choice([_weird(rng), data, [data], {"extends": _weird(rng)}]) if kind == 0 else _mutate_inside(rng, data)
    parent = _get(data, parent_path)
    if kind == 0 and isinstance(parent, dict):
        del parent[last]
    elif kind == 1:
        parent[last] = _weird(rng)
    elif kind == 2:
        value = parent[last]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300:
            parent[last] = rng.choice([-value, value * 10**rng.randrange(1, 30), value + 0.5, 0, 10**6, -(10**6)])
        else:
            parent[last] = rng.choice([type(value).__name__, [value], {"x": value}, 3.5])
    elif kind == 3:
        deep: Any = rng.choice([1, "x", {}])
        for _ in range(rng.choice([5, 50, 5000])):
            deep = rng.choice([[deep], {"a": deep}])
        parent[last] = deep
    elif kind == 4 and isinstance(parent, dict):
        parent[rng.choice(KEYS) + rng.choice(["", "_", "s"])] = _weird(rng)
    else:
        _mutate_inside(rng, data)
    return data


def _mutate_inside(rng: random.Random, data: Any) -> Any:
    if isinstance(data, dict):
        section = rng.choice(["clip_config", "gpt2_config", "data_paths", "training_config", "evaluation"])
        data.setdefault(section, {}) if isinstance(data.get(section, {}), dict) else None
        if isinstance(data.get(section), dict):
            data[section][rng.choice(KEYS)] = _weird(rng)
    return data


def _bad_set(rng: random.Random) -> str:
    key = rng.choice(["", ".", "..", "gpt2_config", "gpt2_config.", "gpt2_config.visual_tokens_length", "a.b.c.d",
                      "training_config.learning_rate", "data_paths", "data_paths.source", "clip_config.image_size",
                      "seed.x", "id", "🙂.🙂", "evaluation.max_images"])
    value = rng.choice(["", "=", "1", "-1", "1e999", "Infinity", "NaN", "null", "[", "{", '{"source": "coco"}', "[64,64]",
                        "[1e999,1]", '"x"', "true", "💥", "[" * 3000, '{"source": 7}', "0.0", "10000"])
    return rng.choice([f"{key}={value}", key, value, f"{key}=={value}"])


def _case(rng: random.Random, folder: Path, n: int) -> tuple[Path, list[str]]:
    seed = rng.choice(SEEDS)
    path = folder / f"case{n}.json"
    overrides = [_bad_set(rng) for _ in range(rng.choice([0, 0, 0, 1, 2]))]
    data = json.loads(seed.read_text())
    for _ in range(rng.choice([1, 1, 2, 3, 5])):
        data = _mutate(rng, data)
    if rng.random() < 0.15:
        data = {"extends": rng.choice([seed.name, str(seed), "missing.json", str(folder), f"case{n}.json", "", 7,
                                       ["x"], None, "/dev/null", "../" * 40 + "x.json"]),
                **({k: v for k, v in data.items() if k != "extends"} if isinstance(data, dict) else {})}
    try:
        text = json.dumps(data, allow_nan=True) if rng.random() < 0.9 else repr(data)
    except (RecursionError, ValueError):  # nested deeper than Python writes: JSON that deep, written by hand
        text = "[" * 5000 + "1" + "]" * 5000
    roll = rng.random()
    if roll < 0.05:
        path.write_text(text[: rng.randrange(len(text) + 1)])  # truncated
    elif roll < 0.08:
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))  # binary junk
    elif roll < 0.10:
        path.write_bytes(text.encode("utf-16"))
    else:
        path.write_text(text)
    return path, overrides


def test_fuzzed_specs_end_in_a_spec_or_a_capexp_error(tmp_path: Path) -> None:
    rng = random.Random(17)
    for spec in (REPO / "experiments").glob("*.json"):  # the seeds extend seed_config.json
        (tmp_path / spec.name).write_text(spec.read_text())
    runner = CliRunner()
    outcomes = {"spec": 0, "error": 0}
    started = time.perf_counter()
    for n in range(CASES):
        path, overrides = _case(rng, tmp_path, n)
        try:
            spec = load_spec(path, overrides)
            assert isinstance(spec, Spec)
            outcomes["spec"] += 1
        except CapexpError as e:
            assert str(e).strip(), f"case {n}: an empty message"
            outcomes["error"] += 1
        except Exception as e:  # noqa: BLE001 - any other exception is the bug this test looks for
            raise AssertionError(f"case {n} ({path.read_bytes()[:300]!r}, --set {overrides}): "
                                 f"{type(e).__name__}: {str(e)[:300]}") from e
        if n % CLI_EVERY == 0:
            got = runner.invoke(cli, ["validate", str(path), *[a for o in overrides for a in ("--set", o)]])
            assert got.exit_code in (0, 2), f"case {n}: exit {got.exit_code}: {got.output[-500:]} {got.exception!r}"
            assert "Traceback" not in got.output
            assert got.exception is None or isinstance(got.exception, SystemExit)
    seconds = time.perf_counter() - started
    print(f"fuzz: {CASES} cases in {seconds:.1f}s: {outcomes['spec']} valid specs, {outcomes['error']} CapexpErrors")
    assert outcomes["spec"] > 0 and outcomes["error"] > CASES // 2
