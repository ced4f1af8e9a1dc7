"""Study search spaces: JSON files under `studies/`, validated by pydantic.

A search space names the spec keys a study varies (dotted, as in `--set` and the MLflow params),
the objective, the sampler and the pruner. `studies/default.json` searches the seed's four
knobs on grids that contain the seed's six values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from capexp.spec import schema as specs
from capexp.errors import CapexpError, warn
from capexp.extends import resolve
from capexp.paths import project_file
from capexp.study.params import Categorical, FloatRange, IntRange, Param, _Strict
from capexp.study.pareto import Objective, Objectives, check_pruner

__all__ = [
    "FREEZE_KEY",
    "Categorical",
    "IntRange",
    "FloatRange",
    "Objective",
    "TpeSampler",
    "GridSampler",
    "MedianPruner",
    "HyperbandPruner",
    "NoPruner",
    "SearchSpace",
    "default_space_path",
    "load_space",
    "spec_keys",
]

FREEZE_KEY = "gpt2_config.n_layers_to_freeze"


# ---------------------------------------------------------------------------- objective, sampler, pruner
class TpeSampler(_Strict):
    name: Literal["tpe"] = "tpe"
    seed: int = 0  # each worker and each resume derives its own seed from this one
    n_startup_trials: int = Field(5, ge=1)  # random trials before TPE models the results


class GridSampler(_Strict):
    """Every combination of the choices once (ranges are not allowed); for small spaces."""

    name: Literal["grid"]
    seed: int = 0  # order in which the grid is visited


class MedianPruner(_Strict):
    """Stop a trial whose best value so far is worse than the median of earlier trials at that epoch."""

    name: Literal["median"] = "median"
    n_startup_trials: int = Field(3, ge=0)  # trials that are never pruned, to set the median
    n_warmup_steps: int = Field(0, ge=0)  # epochs always completed before a trial may be pruned


class HyperbandPruner(_Strict):
    """Successive halving in several brackets; the maximum resource is the base's epochs (`training_config.total_epochs`)."""

    name: Literal["hyperband"]
    min_resource: int = Field(1, ge=1)  # epochs every trial runs
    reduction_factor: int = Field(3, ge=2)


class NoPruner(_Strict):
    name: Literal["none"]


def _named_default(default: str):
    def kind(value: Any) -> str:
        if isinstance(value, dict):
            return str(value.get("name", default))
        return getattr(value, "name", default)

    return Discriminator(kind)


Sampler = Annotated[
    Union[Annotated[TpeSampler, Tag("tpe")], Annotated[GridSampler, Tag("grid")]],
    _named_default("tpe"),
]
Pruner = Annotated[
    Union[
        Annotated[MedianPruner, Tag("median")],
        Annotated[HyperbandPruner, Tag("hyperband")],
        Annotated[NoPruner, Tag("none")],
    ],
    _named_default("median"),
]


# ---------------------------------------------------------------------------- the space
def spec_keys() -> set[str]:
    """Every dotted key a spec has (data keys of every data source), `id` and `notes` excluded."""
    keys: set[str] = set()

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(f"{prefix}{name}.", ann)
            else:
                keys.add(f"{prefix}{name}")

    walk("", specs.Spec)
    keys -= {"id", "notes", "data_paths"}
    for source in (specs.CaptionListData, specs.CocoData, specs.Flickr8kData, specs.KarpathyData, specs.GeneratedData):
        walk("data_paths.", source)
    return keys - {"data_paths.source"}


class SearchSpace(_Strict):
    """What a study searches: `params` by dotted spec key, plus objective, sampler and pruner."""

    notes: str = ""  # why the space is what it is; becomes the study's parent-run description
    budget: dict[str, JsonValue] = {}  # spec values every trial runs with (fewer epochs, ...); not in --best-spec
    objective: Objectives = Objective()  # or a list of several (capexp.study.pareto)
    sampler: Sampler = TpeSampler()
    pruner: Pruner = MedianPruner()
    params: dict[str, Param] = Field(min_length=1)

    @field_validator("params")
    @classmethod
    def _known_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        import difflib

        valid = spec_keys()
        for key, param in v.items():
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
                hint = f"did you mean `{close[0]}`?" if close else "use a dotted spec key such as `training_config.learning_rate`."
                raise ValueError(f"`{key}` is not a spec key; {hint}")
            if getattr(param, "reference_depth", None) is not None and key != FREEZE_KEY:
                raise ValueError(f"`{key}`: `reference_depth` only applies to `{FREEZE_KEY}`")
            if key == FREEZE_KEY and isinstance(param, FloatRange):
                raise ValueError(f"`{key}` counts blocks: give `choices` or an int range, not a float range")
            for other in param.when or {}:
                if other not in valid:
                    raise ValueError(f"`{key}.when`: `{other}` is not a spec key")
                if other in v and list(v).index(other) > list(v).index(key):
                    raise ValueError(f"`{key}.when` names `{other}`, which is searched after it: list `{other}` first")
        return v

    @field_validator("budget")
    @classmethod
    def _budget_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - spec_keys())
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not spec keys; use dotted keys such as `training_config.num_epochs`")
        return v

    def budget_overrides(self) -> list[str]:
        """`budget` as `--set` overrides."""
        return [f"{key}={json.dumps(value)}" for key, value in self.budget.items()]

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> SearchSpace:
        if isinstance(self.sampler, GridSampler):
            ranged = [k for k, p in self.params.items() if not isinstance(p, Categorical)]
            conditional = [k for k, p in self.params.items() if p.when]
            if conditional:
                raise ValueError(f"the grid sampler visits every combination, so it cannot leave a param out: "
                                 f"{', '.join(conditional)} {'has' if len(conditional) == 1 else 'have'} `when`; "
                                 f"use the tpe sampler")
            if ranged:
                raise ValueError(
                    f"the grid sampler needs `choices` for every param, but {', '.join(ranged)} "
                    f"{'is a range' if len(ranged) == 1 else 'are ranges'}; list the values or use the tpe sampler"
                )
        return self

    @field_validator("pruner")
    @classmethod
    def _prunable(cls, v: Any, info: ValidationInfo) -> Any:
        return check_pruner(v, info.data.get("objective"))

    def fit_to_depth(self, depth: int, origin: str) -> SearchSpace:
        """The space with `n_layers_to_freeze` bounded by a decoder of `depth` blocks.

        Choices with a `reference_depth` R are rescaled: v -> round(v * depth / R), so the seed's
        6, 10, 11 of GPT-2's 12 blocks stay 6, 10, 11 on GPT-2 and become 1, 2 (half, all) on a
        2-block decoder. Other choices beyond `depth` are dropped, and a range is clamped, with a
        warning; nothing left is an error.
        """
        param = self.params.get(FREEZE_KEY)
        if param is None:
            return self
        fitted: Categorical | IntRange
        if isinstance(param, Categorical):
            values = [self.fit_value(FREEZE_KEY, c, depth) for c in param.choices]
            kept = list(dict.fromkeys(v for v in values if v is None or (isinstance(v, int) and v <= depth)))
            dropped = [c for c, v in zip(param.choices, values) if v not in kept]
            if not kept:
                raise CapexpError(
                    f"{origin}: `params.{FREEZE_KEY}` has no choice within the decoder's {depth} blocks "
                    f"(got {json.dumps(param.choices)}). Use values from 0 to {depth}, or set "
                    f"`reference_depth` to the depth the values were written for."
                )
            if dropped:
                warn(f"{origin}: `params.{FREEZE_KEY}` choices {dropped} exceed the decoder's {depth} blocks and are left out.")
            fitted = Categorical(choices=kept)
        else:  # an IntRange: float ranges are refused when the space is loaded
            if param.low > depth:
                raise CapexpError(
                    f"{origin}: `params.{FREEZE_KEY}.low` is {param.low} but the decoder has {depth} blocks. "
                    f"Use a range within 0 to {depth}."
                )
            if param.high > depth:
                warn(f"{origin}: `params.{FREEZE_KEY}.high` {param.high} is cut to the decoder's {depth} blocks.")
            fitted = param.model_copy(update={"high": min(param.high, depth)})
        return self.model_copy(update={"params": {**self.params, FREEZE_KEY: fitted}})

    def fit_value(self, key: str, value: JsonValue, depth: int) -> JsonValue:
        """`value` for `key` as this space means it on a decoder of `depth` blocks (rescaled freeze counts)."""
        param = self.params.get(key)
        reference = param.reference_depth if isinstance(param, Categorical) and key == FREEZE_KEY else None
        if reference is None or not isinstance(value, int) or isinstance(value, bool):
            return value
        return min(depth, int(value * depth / reference + 0.5))


# ---------------------------------------------------------------------------- loading
_TAGS = {"objective", "objectives", "categorical", "int", "float", "tpe", "grid", "median", "hyperband", "none"}


def default_space_path() -> Path:
    """`studies/default.json`: the seed's four knobs on grids holding the seed's values."""
    return project_file("studies", "default.json")


def _explain(err: ValidationError, origin: str) -> CapexpError:
    sentences = []
    for e in err.errors():
        loc = [str(p) for i, p in enumerate(e["loc"]) if not (p in _TAGS and i in (1, 2))]
        shown = ".".join(loc) or "the file"
        if e["type"] == "extra_forbidden":
            sentences.append(f"`{shown}` is not a search-space key.")
        else:
            message = e["msg"].removeprefix("Value error, ")
            sentences.append(f"`{shown}`: {message[0].lower()}{message[1:]} (got {json.dumps(e.get('input'), default=str)}).")
    return CapexpError(
        f"{origin}: " + " ".join(sentences) + " Valid top-level keys: extends, notes, objective, sampler, pruner, budget, params; "
        "see studies/default.json for an example. Fix the file and run again."
    )


_MERGED = ("budget", "params")  # merged key by key over the parent's; other top-level keys replace it


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = dict(parent)
    for key, value in child.items():
        both = isinstance(value, dict) and isinstance(parent.get(key), dict)
        merged[key] = {**parent[key], **value} if key in _MERGED and both else value
    return merged


def load_space(path: str | Path | None = None) -> SearchSpace:
    """Read and validate a search-space file (default: `studies/default.json`). A file may name another
    in `extends`: its `params` and `budget` are merged key by key over the other's, other keys replace."""
    path = Path(path) if path is not None else default_space_path()
    data = resolve(path, "Search-space file", _merge, "Check the path, or leave out --space for the default.")
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as e:
        raise _explain(e, str(path)) from None
