"""The spec reference page, generated from the pydantic models of `capexp.spec.schema`.

Every key of a spec, section by section, with its JSON type (and bounds), its default and what it
does: a field's `Field(description=...)` where it has one, else the comment at the end of its line in
the source. `python -m capexp.spec.reference > docs/spec-reference.md` writes the page the docs
site serves; `tests/test_docs.py` fails when that page and the models disagree.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from capexp.spec import schema

__all__ = ["spec_reference"]

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
_BOUNDS = ((annotated_types.Ge, "≥", "ge"), (annotated_types.Gt, ">", "gt"),
           (annotated_types.Le, "≤", "le"), (annotated_types.Lt, "<", "lt"))


def _anchor(path: str) -> str:
    """The heading id of a dotted path: `training_config.scst` -> `training-config-scst`."""
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment ending its line (or its last line) in `cls`'s source."""
    source = textwrap.dedent(inspect.getsource(cls))
    by_line = {tok.start[0]: tok.string.lstrip("#").strip()
               for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = (node.end_lineno, node.lineno)
            found[node.target.id] = next((by_line[n] for n in lines if n in by_line), "")
    return found


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union (Optional included), else the annotation alone."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _is_section(annotation: Any) -> bool:
    """Whether a key holds a section (a model of its own) rather than a value."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type(annotation: Any, path: str) -> str:
    """A JSON reading of a Python annotation: `integer`, `"a" or "b"`, `[integer, integer]`, ..."""
    parts = []
    for member in _members(annotation):
        origin = typing.get_origin(member)
        if origin is typing.Literal:
            parts.append(" or ".join(f'`{json.dumps(v)}`' for v in typing.get_args(member)))
        elif origin is tuple:
            parts.append("[" + ", ".join(_type(a, path) for a in typing.get_args(member)) + "]")
        elif _is_section(member):
            source = member.model_fields.get("source")
            if source is not None and typing.get_origin(source.annotation) is typing.Literal:
                name = typing.get_args(source.annotation)[0]
                parts.append(f"[`{name}`](#{_anchor(f'{path} {name}')})")
            else:
                parts.append(f"[object](#{_anchor(path)})")
        else:
            parts.append(_JSON_TYPES.get(member, getattr(member, "__name__", str(member))))
    return " or ".join(dict.fromkeys(parts))


def _bounds(info: FieldInfo) -> str:
    """The field's numeric bounds (`≥ 1`, `> 0.0, ≤ 1.0`), "" for none."""
    found = []
    for item in info.metadata:
        for kind, sign, attr in _BOUNDS:
            if isinstance(item, kind):
                found.append(f"{sign} {getattr(item, attr)}")
    return ", ".join(found)


def _default(info: FieldInfo, path: str) -> str:
    """The default as JSON, a link to a section's own defaults, or what sets it."""
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return f'`{json.dumps(value.model_dump(include={"source"}) or {})}`'
        return "set when the spec loads"
    if info.default is PydanticUndefined:
        return "required"
    if isinstance(info.default, BaseModel):
        return f"[its defaults](#{_anchor(path)})"
    return f"`{json.dumps(info.default)}`"


def _doc(cls: type[BaseModel]) -> str:
    """The model's own docstring on one line ("" for none)."""
    doc = cls.__doc__ if cls.__doc__ and cls.__doc__ != BaseModel.__doc__ else ""
    return " ".join(inspect.cleandoc(doc).split())


def _summary(models: list[type[BaseModel]]) -> str:
    """What a key holding a section does: the section's first sentence, or the choice among several."""
    if len(models) > 1:
        return "one of several forms, picked by its `source` key"
    return _doc(models[0]).split(". ")[0].rstrip(".") if models else ""


def _table(cls: type[BaseModel], prefix: str) -> tuple[list[str], list[tuple[str, list[type[BaseModel]]]]]:
    """The Markdown table of `cls`'s keys, and the sections nested in it (dotted path, its models)."""
    comments = _comments(cls)
    rows = ['<div class="spec-keys" markdown>', "", "| key | type | default | what |", "| --- | --- | --- | --- |"]
    nested: list[tuple[str, list[type[BaseModel]]]] = []
    for name, info in cls.model_fields.items():
        path = f"{prefix}{name}"
        kind = _type(info.annotation, path)
        if bounds := _bounds(info):
            kind += f", {bounds}"
        models = [m for m in _members(info.annotation) if _is_section(m)]
        what = info.description or comments.get(name) or _summary(models)
        rows.append(f"| `{path}` | {kind} | {_default(info, path)} | {what.replace('|', chr(92) + '|')} |")
        if models:
            nested.append((path, models))
    return [*rows, "", "</div>"], nested


def _section(path: str, cls: type[BaseModel], level: int) -> list[str]:
    rows, nested = _table(cls, f"{path}.")
    source = cls.model_fields.get("source")
    title = f"`{path}`"
    anchor = _anchor(path)
    if source is not None and typing.get_origin(source.annotation) is typing.Literal:
        name = typing.get_args(source.annotation)[0]
        title += f' with `"source": "{name}"`'
        anchor = _anchor(f"{path} {name}")
    out = ["", f"{'#' * level} {title} {{ #{anchor} }}", ""]
    if doc := _doc(cls):
        out += [doc, ""]
    out += rows
    for sub_path, models in nested:
        out += _nested(sub_path, models, level + 1)
    return out


def _nested(path: str, models: list[type[BaseModel]], level: int) -> list[str]:
    """One section, or a heading for a key that takes one of several sections (by `source`) and one each."""
    if len(models) == 1:
        return _section(path, models[0], level)
    out = ["", f"{'#' * level} `{path}` {{ #{_anchor(path)} }}", "",
           f"One of {len(models)} forms; its `source` key says which, and each form has its own keys."]
    for model in models:
        out += _section(path, model, level + 1)
    return out


def spec_reference() -> str:
    """The spec reference as one Markdown page: the top-level keys, then each section's."""
    rows, nested = _table(schema.Spec, "")
    lines = [
        "# Spec reference",
        "",
        "<!-- Generated from capexp.spec.schema by `python -m capexp.spec.reference > docs/spec-reference.md`;"
        " edit the models, not this page. -->",
        "",
        "Every key a spec may hold, with its JSON type, its default and what it does. Keys are written by their",
        "dotted path, as `--set` and the MLflow params name them. A key left out takes its default; an unknown",
        "key is an error. How specs load, inherit and override is on [Specs](specs.md).",
        "",
        "## Top level { #top-level }",
        "",
        *rows,
    ]
    for path, models in nested:
        lines += _nested(path, models, 2)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(spec_reference(), end="")
