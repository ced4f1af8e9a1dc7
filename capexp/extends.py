"""JSON files that build on another file by name (`"extends": "base.json"`), as specs and search spaces do.

`resolve` reads the chain (each name relative to the file that gives it), refuses cycles and files that
are missing or hold no JSON object, and folds the files together with the caller's merge rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capexp.errors import CapexpError

__all__ = ["resolve"]

Merge = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def _read_object(path: Path, kind: str, via: str, hint: str) -> dict[str, Any]:
    try:
        is_file = path.is_file()
    except OSError as e:  # a name too long for the file system, and the like
        raise CapexpError(f"{kind} {str(path)[:200]}{via} cannot be opened ({e.strerror}). Check the path.") from None
    if not is_file:
        what = "is a directory, not a JSON file" if path.is_dir() else "does not exist"
        raise CapexpError(f"{kind} {path}{via} {what}. {hint}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CapexpError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. Fix the file.") from None
    except UnicodeDecodeError as e:
        raise CapexpError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}). Save it as UTF-8 JSON.") from None
    except (RecursionError, OSError) as e:
        why = "nests too deeply" if isinstance(e, RecursionError) else f"cannot be read ({e.strerror or e})"
        raise CapexpError(f"{path} {why}. Fix the file.") from None
    if not isinstance(data, dict):
        raise CapexpError(f"{kind} {path}{via} must hold a JSON object at the top, not {type(data).__name__}. "
                          f"Fix the file{' or `extends`' if via else ''}.")
    return data


def resolve(path: Path, kind: str, merge: Merge, hint: str, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The JSON object in `path` with its `extends` chain merged under it by `merge(parent, child)`.
    `kind` names the file in messages ("Spec file"); `hint` tells what to do about a missing one."""
    if path.resolve() in [p.resolve() for p in chain]:
        names = " -> ".join(str(p) for p in (*chain, path))
        raise CapexpError(f"{kind}s extend each other in a cycle: {names}. Remove one `extends`.")
    data = _read_object(path, kind, f" (extended by {chain[-1]})" if chain else "", hint)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent or "\x00" in parent:
        raise CapexpError(f"{path}: `extends` must be a file name (a string), got {json.dumps(parent)[:200]}.")
    return merge(resolve(path.parent / parent, kind, merge, hint, (*chain, path)), data)
