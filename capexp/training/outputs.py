"""The files a run (and `capexp evaluate`) writes beside its metrics: captions as CSV, curves as PNG."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["write_captions", "plot_curves"]


def write_captions(path: Path, image_ids: list[str], captions: list[str], references: list[list[str]]) -> None:
    """One row per image: `image_id, caption, references` (all references joined by " | ")."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "caption", "references"])
        for image_id, caption, refs in zip(image_ids, captions, references):
            w.writerow([image_id, caption, " | ".join(refs)])


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss curves on the left, caption metrics on the right, one point per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(1, len(history) + 1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("train_loss", "val_loss"):  # self-critical epochs have no train_loss
        points = [(e, h[name]) for e, h in zip(epochs, history) if name in h]
        left.plot(*zip(*points), marker="o", label=name)
    left.set(xlabel="epoch", ylabel="loss", title="Loss")
    for name in ("bertscore_precision", "bertscore_recall", "bertscore_f1", "bleu4", "meteor", "cider", "scst_reward"):
        points = [(e, h[name]) for e, h in zip(epochs, history) if name in h]
        if points:
            right.plot(*zip(*points), marker="o", label=name)
    right.set(xlabel="epoch", title="Validation caption metrics")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
