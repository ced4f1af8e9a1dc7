"""A search space's parameters: the values one spec key may take, and when it is searched at all.

`Categorical`, `IntRange` and `FloatRange` each suggest a value through an Optuna trial and
translate between the value a spec holds and the one Optuna stores. `when` makes a parameter
conditional (define-by-run): it is searched only in trials whose values (or the base spec's, for keys
the space does not search) of the keys it names are among the listed ones; other trials leave the
base spec's value, and Optuna records no value for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag, field_validator, model_validator

__all__ = ["Categorical", "IntRange", "FloatRange", "Param", "active_values"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Param(_Strict):
    # searched only when each named key's value is one of its list (earlier params, else the base spec's)
    when: dict[str, list[JsonValue]] | None = None

    @field_validator("when")
    @classmethod
    def _lists(cls, v: dict[str, list[JsonValue]] | None) -> dict[str, list[JsonValue]] | None:
        for key, allowed in (v or {}).items():
            if not allowed:
                raise ValueError(f"`when.{key}` lists no value; give the values that turn this parameter on")
        return v

    def applies(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter is searched, given the values of the keys `when` names."""
        return all(any(_same(values.get(key), v) for v in allowed) for key, allowed in (self.when or {}).items())


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# ---------------------------------------------------------------------------- parameters
class Categorical(_Param):
    """One of a list of values; lists such as image sizes are fine."""

    choices: list[JsonValue] = Field(min_length=1)
    # Only for `gpt2_config.n_layers_to_freeze`: the choices were written for a decoder of this
    # many blocks and are rescaled to the base decoder's depth (see `fit_to_depth`).
    reference_depth: int | None = Field(None, ge=1)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, v: list[JsonValue]) -> list[JsonValue]:
        texts = [json.dumps(c, sort_keys=True) for c in v]
        if len(set(texts)) != len(texts):
            raise ValueError(f"must not repeat a value, got {json.dumps(v)}")
        return v

    def encoded(self) -> list[None | bool | int | float | str]:
        """The choices as Optuna stores them: scalars as they are, lists and objects as JSON text."""
        return [c if c is None or isinstance(c, (bool, int, float, str)) else json.dumps(c) for c in self.choices]

    def suggest(self, trial: Any, name: str) -> JsonValue:
        return self.decode(trial.suggest_categorical(name, self.encoded()))

    def decode(self, stored: Any) -> JsonValue:
        """The choice Optuna stored as `stored`."""
        return self.choices[self.encoded().index(stored)]

    def encode(self, value: JsonValue) -> None | bool | int | float | str:
        """`value` as Optuna stores it; ValueError if it is not one of the choices."""
        text = json.dumps(value, sort_keys=True)
        for choice, stored in zip(self.choices, self.encoded()):
            if json.dumps(choice, sort_keys=True) == text:
                return stored
        raise ValueError(f"{json.dumps(value)} is not one of the choices {json.dumps(self.choices)}")


class _Range(_Param):
    """`low` to `high` (fields of the subclass), checked once the model is built."""

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        _check_range(self.low, self.high, self.log, self._stepped())  # type: ignore[attr-defined]
        return self

    def _stepped(self) -> bool:
        raise NotImplementedError


class IntRange(_Range):
    """An integer from `low` to `high` inclusive."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    def _stepped(self) -> bool:
        return self.step != 1

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def decode(self, stored: Any) -> int:
        return int(stored)

    def encode(self, value: JsonValue) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not self.low <= value <= self.high:
            raise ValueError(f"{json.dumps(value)} is not an integer from {self.low} to {self.high}")
        return value


class FloatRange(_Range):
    """A float from `low` to `high`; `log` samples on a log scale (learning rates)."""

    type: Literal["float"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    def _stepped(self) -> bool:
        return self.step is not None

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def decode(self, stored: Any) -> float:
        return float(stored)

    def encode(self, value: JsonValue) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not self.low <= value <= self.high:
            raise ValueError(f"{json.dumps(value)} is not a number from {self.low} to {self.high}")
        return float(value)


def _check_range(low: float, high: float, log: bool, stepped: bool) -> None:
    if low > high:
        raise ValueError(f"`low` ({low}) must not exceed `high` ({high})")
    if log and low <= 0:
        raise ValueError(f"`log` needs `low` > 0, got {low}")
    if log and stepped:
        raise ValueError("`log` and `step` cannot be combined")


def _param_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "categorical"))
    return getattr(value, "type", "categorical")


Param = Annotated[
    Union[
        Annotated[Categorical, Tag("categorical")],
        Annotated[IntRange, Tag("int")],
        Annotated[FloatRange, Tag("float")],
    ],
    Discriminator(_param_kind),
]


def active_values(params: Mapping[str, Param], base: Mapping[str, Any],
                  pick: Callable[[str, Param], Any]) -> dict[str, Any]:
    """`pick(key, param)` for each parameter whose `when` holds, in the space's order: a condition reads the
    values picked before it, else `base` (the base spec's flattened values)."""
    values: dict[str, Any] = {}
    for key, param in params.items():
        if param.applies({**base, **values}):
            values[key] = pick(key, param)
    return values
