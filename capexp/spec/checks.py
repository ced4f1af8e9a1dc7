"""Checks a spec must pass before a run exists: values pydantic alone cannot judge.

`load_spec` checks each value on its own; these checks need to know the decoder (its maximum
positions and depth: `capexp.backbones.decoder_facts`, without loading weights) and what a run will log.
`capexp validate`, `capexp run` and `capexp study` call `check_spec`, so a spec that training
would reject fails with exit code 2 before any MLflow run is created.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from capexp.errors import CapexpError
from capexp.spec.schema import Spec

if TYPE_CHECKING:
    from capexp.backbones import DecoderFacts

__all__ = ["ALWAYS_LOGGED", "COCO_METRICS", "logged_metrics", "check_decoder_fit",
           "check_best_metric", "check_init_from", "check_encoder_cut", "check_spec"]

ALWAYS_LOGGED = ("train_loss", "val_loss", "bertscore_precision", "bertscore_recall", "bertscore_f1")
COCO_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")  # need Java at run time


def logged_metrics(spec: Spec) -> tuple[str, ...]:
    """The metrics a run of `spec` logs after each epoch (COCO ones only when Java is on PATH; `train_loss`
    after cross-entropy epochs, `scst_reward` and `scst_baseline` after self-critical ones)."""
    coco = COCO_METRICS if spec.evaluation.coco_metrics and shutil.which("java") else ()
    scst = ("scst_reward", "scst_baseline") if spec.training_config.scst else ()
    return ALWAYS_LOGGED + coco + scst


def check_best_metric(spec: Spec, origin: str) -> None:
    """`training_config.best_metric` must be a metric the run logs every epoch."""
    metric = spec.training_config.best_metric
    if metric == "train_loss" and spec.training_config.scst:
        raise CapexpError(
            f"{origin}: `training_config.best_metric` is 'train_loss', which self-critical epochs do not log "
            f"(`training_config.scst` is set). Pick val_loss or a caption metric such as cider."
        )
    if metric in ALWAYS_LOGGED:
        return
    if metric in COCO_METRICS:
        if not spec.evaluation.coco_metrics:
            raise CapexpError(
                f"{origin}: `training_config.best_metric` is {metric!r}, a COCO metric, but `evaluation.coco_metrics` "
                f"is false, so the run never logs it. Set `evaluation.coco_metrics` to true or pick one of: "
                f"{', '.join(ALWAYS_LOGGED)}."
            )
        if shutil.which("java") is None:
            raise CapexpError(
                f"{origin}: `training_config.best_metric` is {metric!r}, which needs Java (BLEU, METEOR, ROUGE-L and "
                f"CIDEr run Java programs) and `java` is not on PATH. Install a Java runtime (for example `apt-get "
                f"install default-jre-headless`) or pick one of: {', '.join(ALWAYS_LOGGED)}."
            )
        return
    raise CapexpError(
        f"{origin}: `training_config.best_metric` is {metric!r}, which a run does not log. Use one of: "
        f"{', '.join(ALWAYS_LOGGED)}" + (f", {', '.join(COCO_METRICS)}" if spec.evaluation.coco_metrics else "")
        + " (the COCO metrics need `evaluation.coco_metrics` true and Java)."
    )


def check_decoder_fit(spec: Spec, origin: str, facts: DecoderFacts | None = None) -> None:
    """Visual plus text tokens must fit the decoder's positions; `gpt2_config.n_layers_to_freeze` its depth.

    `facts` are the decoder's (default: `decoder_facts`, read without weights, which may not know a
    hub id that is not cached; then only the run checks, after it loads the decoder).
    """
    from capexp.backbones import decoder_facts

    g = spec.gpt2_config
    facts = facts if facts is not None else decoder_facts(g.model)
    if facts is None:
        return
    positions = facts.positions
    if positions is not None:
        # training feeds k visual tokens + the caption + EOS; decoding k + (max tokens - 1)
        text = g.text_tokens_max_length + 1
        generated = (spec.evaluation.max_caption_tokens or g.text_tokens_max_length) - 1
        need = g.prefix_length + max(text, generated)
        if need > positions:
            cells = f" and the regions mapper's {g.mapper_regions ** 2} cell tokens" if g.mapper == "regions" else ""
            raise CapexpError(
                f"{origin}: `gpt2_config.visual_tokens_length` ({g.visual_tokens_length}){cells} plus the caption tokens "
                f"(`gpt2_config.text_tokens_max_length` {g.text_tokens_max_length} + EOS"
                + (f", or `evaluation.max_caption_tokens` {spec.evaluation.max_caption_tokens}" if spec.evaluation.max_caption_tokens else "")
                + f") need {need} positions, but the decoder {g.model} has {positions}. Lower them so that "
                f"visual + text tokens + 1 is at most {positions}."
            )
    layers = facts.depth
    freeze = g.n_layers_to_freeze
    if layers is not None and freeze is not None and freeze > layers:
        raise CapexpError(
            f"{origin}: `gpt2_config.n_layers_to_freeze` is {freeze} but {g.model} has {layers} blocks. "
            f"Use a value from 0 to {layers}."
        )


# keys that size or wire the model: a checkpoint loads only into a model built with the same values
_MODEL_KEYS = {"clip_config": ("model", "image_size", "features", "train_last_blocks"),
               "gpt2_config": ("model", "tokenizer", "visual_tokens_length", "n_layers_to_freeze", "mapper",
                               "mapper_layers", "mapper_regions", "vocabulary")}


def check_init_from(spec: Spec, origin: str, base: Spec) -> None:
    """The model `spec` builds must be the one `training_config.init_from` saved (`base`, its spec)."""
    differ = []
    for section, keys in _MODEL_KEYS.items():
        there, here = getattr(base, section), getattr(spec, section)
        differ += [f"{section}.{key} ({getattr(there, key)!r} there, {getattr(here, key)!r} here)"
                   for key in keys if getattr(there, key) != getattr(here, key)]
    if differ:
        raise CapexpError(
            f"{origin}: `training_config.init_from` is {spec.training_config.init_from!r}, a model built with other "
            f"settings: {'; '.join(differ)}. Set these keys to the checkpoint's values (or start from a run "
            f"whose model matches this spec)."
        )


def check_encoder_cut(spec: Spec, origin: str) -> None:
    """`clip_config.train_last_blocks` needs an encoder that can be cut (an EfficientNet-Lite preset) and at most
    its depth (read from the weights' keys)."""
    from capexp.backbones import resolve_encoder

    c = spec.clip_config
    if c.train_last_blocks:
        try:
            resolve_encoder(c.model, c.image_size, c.features, c.train_last_blocks)
        except CapexpError as e:
            raise CapexpError(f"{origin}: {e}") from None


def check_spec(spec: Spec, origin: str) -> None:
    """Everything a run would reject later, checked now (no weights loaded, no run created)."""
    check_decoder_fit(spec, origin)
    check_best_metric(spec, origin)
    check_encoder_cut(spec, origin)
