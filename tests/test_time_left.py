"""The training progress line's estimate of the whole run's time left."""

from __future__ import annotations

import math
import re

import pytest
import torch

from capexp.training.cross_entropy import CaptionData, RunClock, _Batches


def test_time_left_is_the_mean_step_time_times_the_steps_left_over_all_epochs() -> None:
    clock = RunClock(total_steps=3 * 10)  # 3 epochs of 10 steps
    assert math.isnan(clock.left()) and clock.describe() == "? left"
    for seconds in (2.0, 4.0, 6.0):  # three steps of epoch 1, mean 4 s
        clock.tick(seconds)
    assert clock.left() == pytest.approx(4.0 * (30 - 3))
    assert clock.describe() == "~1m48s left"
    for _ in range(27 - 1):
        clock.tick(4.0)
    assert clock.left() == pytest.approx(4.0) and clock.describe() == "~0m04s left"
    hours = RunClock(total_steps=188 * 10)
    hours.tick(12.0)  # a CPU's step of the full Flickr8k spec: the hours ahead show after one step
    assert hours.describe() == "~6h15m left"


def test_the_epochs_progress_line_counts_every_epoch_of_the_run(monkeypatch) -> None:
    from types import SimpleNamespace

    spec = SimpleNamespace(
        seed=0, gpt2_config=SimpleNamespace(text_tokens_max_length=4),
        training_config=SimpleNamespace(one_caption_per_image=True, batch_size=2, learning_rate=1e-3, weight_decay=0.0,
                                        grad_clip=None, warmup_steps=0, num_epochs=3, lr_schedule="constant",
                                        feature_crop=None, label_smoothing=0.0, encoder_lr=1e-4),
    )

    class Tokenizer:
        eos_token_id, pad_token_id = 1, 0

        def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
            return {"input_ids": [[2 + len(word) for word in text.split()] for text in texts]}

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, features, ids, mask, label_smoothing=0.0):
            return (self.w * features.sum()) ** 2

    shown: list[str] = []
    monkeypatch.setattr("capexp.training.cross_entropy.tqdm.set_postfix",
                        lambda self, **kw: shown.append(kw["run"]), raising=False)
    train = CaptionData(["a", "b", "c", "d", "e"], torch.ones(5, 3), [["a dog"], ["a cat"], ["sun"], ["sea"], ["sky"]])
    batches = _Batches(Model(), Tokenizer(), train, spec, torch.device("cpu"))
    assert batches.clock.total_steps == 3 * 3  # ceil(5 / 2) steps in each of 3 epochs
    batches.epoch(1)
    assert len(shown) == 3 and all(re.fullmatch(r"~\d+m\d\ds left", s) for s in shown)
    assert batches.clock.steps == 3 and batches.clock.left() == pytest.approx(batches.clock.seconds / 3 * 6)
