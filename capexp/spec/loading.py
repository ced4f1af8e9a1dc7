"""Reading a spec file: `extends` chains, `--set` overrides, `$VAR` paths, and the one-paragraph message a
bad file gets; plus the views of a loaded spec that runs log (`flatten`, `spec_hash`) and `missing_paths`."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from capexp.errors import CapexpError
from capexp.extends import resolve
from capexp.spec.schema import CaptionListData, CocoData, Flickr8kData, GeneratedData, KarpathyData, Spec

__all__ = ["load_spec", "flatten", "spec_hash", "parse_override", "missing_paths", "expand_path"]

_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def expand_path(value: str) -> Path:
    """Expand `~`, `$VAR`, `${VAR}` and `${VAR:-default}` in a spec path."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise CapexpError(
            f"The path {value!r} uses ${name}, which is not set. Set the environment variable "
            f"or write the path out in the spec (or with --set)."
        )

    return Path(_ENV.sub(sub, value)).expanduser()


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `dotted.key=JSON_VALUE`; a value that is not JSON is taken as a string."""
    if "=" not in text:
        raise CapexpError(
            f"--set {text!r} has no '='. Write it as dotted.key=JSON_VALUE, for example "
            f"--set gpt2_config.visual_tokens_length=4 or --set clip_config.image_size=[50,50]."
        )
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    except RecursionError:
        raise CapexpError(f"--set {text[:80]!r}: the value nests too deeply. Write a flatter JSON value.") from None
    return key.strip(), value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` into `base`; a section whose `source` changes replaces the inherited one."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        same_kind = not (isinstance(value, dict) and "source" in value and value.get("source") != (old if isinstance(old, dict) else {}).get("source"))
        if isinstance(value, dict) and isinstance(old, dict) and same_kind:
            out[key] = _merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any, origin: str) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise CapexpError(f"{origin}: --set {key}: `{part}` holds a value, not a section; set `{part}` itself.")
        node = child
    old = node.get(parts[-1])
    if isinstance(value, dict) and isinstance(old, dict) and value.get("source", old.get("source")) == old.get("source"):
        node[parts[-1]] = _merge(old, value)
    else:
        node[parts[-1]] = value


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section at `loc` (for did-you-mean suggestions)."""
    model: Any = Spec
    for part in loc:
        if isinstance(part, str) and hasattr(model, "model_fields") and part in model.model_fields:
            ann = model.model_fields[part].annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        elif isinstance(part, str) and model is None:
            return []
        else:  # a discriminated-union tag such as 'flickr8k'
            for cls in (CaptionListData, CocoData, Flickr8kData, KarpathyData, GeneratedData):
                if cls.model_fields["source"].annotation.__args__[0] == part:  # type: ignore[union-attr]
                    model = cls
    return list(model.model_fields) if model is not None and hasattr(model, "model_fields") else []


def _explain(err: ValidationError, origin: str) -> CapexpError:
    sentences = []
    for e in err.errors():
        loc = tuple(e["loc"])
        shown = ".".join(str(p) for p in loc if p not in ("caption_list", "coco", "flickr8k", "karpathy", "generated"))
        if e["type"] == "extra_forbidden":
            valid = _fields_at(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            parent = ".".join(shown.split(".")[:-1])
            hint = f"did you mean `{(parent + '.') if parent else ''}{close[0]}`?" if close else f"valid keys here: {', '.join(valid)}."
            sentences.append(f"`{shown}` is not a spec key; {hint}")
        elif e["type"] == "union_tag_invalid":
            sentences.append(
                f"`{shown}.source` must be one of caption_list, coco, flickr8k, karpathy, generated; got {e['input'].get('source')!r}."
            )
        elif not loc:  # a check across sections: its message names the keys
            sentences.append(f"{e['msg'].removeprefix('Value error, ')}.")
        else:
            got = json.dumps(e.get("input"), default=str)
            sentences.append(f"`{shown}` {e['msg'][0].lower()}{e['msg'][1:]} (got {got}).")
    return CapexpError(f"{origin}: " + " ".join(sentences) + " Fix the file or the --set value and run again.")


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Load a spec file, follow `extends`, apply `--set` overrides, and validate."""
    path = Path(path)
    data = resolve(path, "Spec file", _merge, "Check the path and run again.")
    origin = str(path)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value, origin)
    if overrides:
        origin += " with --set " + " ".join(overrides)
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        raise _explain(e, origin) from None


def flatten(spec: Spec, sections: bool = False) -> dict[str, Any]:
    """Every spec value by its dotted key (`clip_config.image_size`, ...), lists kept as lists; with
    `sections`, every section below the top level too (`training_config.scst` as a dict)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if sections and "." in prefix:
            out[prefix] = value
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", spec.model_dump(mode="json"))
    return out


def spec_hash(spec: Spec) -> str:
    """A short hash of everything that shapes a run (not `id` or `notes`)."""
    data = spec.model_dump(mode="json", exclude={"id", "notes"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def missing_paths(spec: Spec) -> list[tuple[str, Path]]:
    """Data files and folders the spec names that do not exist, as (dotted key, path)."""
    data = spec.data_paths
    out = []
    for name in type(data).model_fields:
        value = getattr(data, name)
        if name == "source" or not isinstance(value, str) or name.endswith("split"):
            continue
        p = expand_path(value)
        try:
            exists = p.exists()
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte
            exists = False
        if not exists:
            out.append((f"data_paths.{name}", p))
    return out
