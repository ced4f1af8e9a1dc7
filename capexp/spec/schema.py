"""Experiment specs: the pydantic models a spec file is validated against (`capexp.spec.loading` reads the file).

A spec is the seed study's training config (experiments/seed_config.json) plus `id`, `notes`, `seed`, a data
source, backbone names and evaluation options. Every key has a default, so the seed's file
loads unchanged and a two-line spec that `extends` another is enough for a variation.
"""

from __future__ import annotations

import datetime as _dt
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Spec", "ClipConfig", "Gpt2Config", "CaptionListData", "CocoData", "Flickr8kData", "KarpathyData", "GeneratedData",
    "DataSpec", "ScstConfig", "TrainingConfig", "EvaluationConfig", "metric_mode",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


# ---------------------------------------------------------------------------- backbones
class ClipConfig(_Section):
    """The image encoder (named `clip_config` after the seed; any registered encoder works)."""

    model: str = "openai/clip-vit-base-patch32"  # registry name, hub id or local folder
    image_size: tuple[int, int] = (224, 224)  # (height, width) the image is resized to
    features: Literal["pooled", "grid"] = "pooled"  # one embedding, or the spatial grid
    train_last_blocks: int = Field(0, ge=0)  # EfficientNet-Lite: train its last N blocks and head (0: frozen)

    @field_validator("image_size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 8:
            raise ValueError(f"must be two sizes >= 8 pixels, got {list(v)}")
        return v


class Gpt2Config(_Section):
    """The language decoder (named `gpt2_config` after the seed; any causal LM works)."""

    model: str = "gpt2"  # registry name, hub id or local folder
    tokenizer: str | None = None  # None: the decoder's own tokenizer
    visual_tokens_length: int = Field(5, ge=1)  # k, visual tokens made by the mapper
    text_tokens_max_length: int = Field(10, ge=1)  # captions cut to this many tokens
    n_layers_to_freeze: int | None = Field(None, ge=0)  # first N decoder blocks frozen
    mapper: Literal["mlp", "transformer", "regions"] = "mlp"  # seed's Linear->Tanh, ClipCap's transformer, or mlp + cells
    mapper_layers: int = Field(4, ge=1)  # transformer mapper depth
    mapper_regions: int = Field(2, ge=1)  # regions mapper: the grid pooled to this many cells a side, one token each
    vocabulary: Literal["full", "train"] = "full"  # train: only the training captions' tokens (capexp.model.vocabulary)

    @property
    def prefix_length(self) -> int:
        """Visual tokens the mapper makes: k, plus one per cell with the regions mapper."""
        return self.visual_tokens_length + (self.mapper_regions**2 if self.mapper == "regions" else 0)


# ---------------------------------------------------------------------------- data sources
class CaptionListData(_Section):
    """The seed's format: JSON lists of {"image": path, "caption": text}, one entry per caption."""

    source: Literal["caption_list"] = "caption_list"  # the default when `source` is absent
    train_captions_path: str  # JSON list of training captions
    val_captions_path: str  # JSON list of validation captions
    images_root: str | None = None  # relative image paths resolve here (default: the JSON's folder, then CWD)


class CocoData(_Section):
    """COCO captions JSON (`captions_{split}.json`) with its image folder."""

    source: Literal["coco"]  # selects this form
    train_annotations: str  # captions_train*.json
    train_images: str  # its image folder
    val_annotations: str  # captions_val*.json
    val_images: str  # its image folder
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # >0: hold out this share of train as val instead


class Flickr8kData(_Section):
    """Flickr8k as distributed: `Flicker8k_Dataset/` and `Flickr8k_text/` under one root."""

    source: Literal["flickr8k"]  # selects this form
    root: str = "${CAPEXP_DATA:-../shared/data}/flickr8k"  # holds Flicker8k_Dataset/ and Flickr8k_text/
    val_split: Literal["dev", "test"] = "dev"  # the official split validated on each epoch


class KarpathyData(_Section):
    """A Karpathy-split JSON (`dataset_coco.json` / `dataset_flickr8k.json` style)."""

    source: Literal["karpathy"]  # selects this form
    dataset_json: str  # the split file
    images_root: str  # image paths in it resolve here
    val_split: Literal["val", "test"] = "val"  # the split validated on each epoch
    include_restval: bool = True  # train on `restval` too, as is customary


class GeneratedData(_Section):
    """Deterministic shape images whose captions describe them; offline and learnable in minutes."""

    source: Literal["generated"]  # selects this form
    num_train: int = Field(800, ge=1)  # training images
    num_val: int = Field(100, ge=1)  # validation images
    image_px: int = Field(64, ge=16)  # side of the rendered square image
    seed: int = 0  # dataset seed (independent of the training seed)


DataSpec = Annotated[
    Union[CaptionListData, CocoData, Flickr8kData, KarpathyData, GeneratedData],
    Field(discriminator="source"),
]


# ---------------------------------------------------------------------------- training
class ScstConfig(_Section):
    """Self-critical sequence training (Rennie et al. 2017), after the cross-entropy epochs: sample
    captions, reward each by its CIDEr-D against the image's training references, minus a baseline."""

    epochs: int = Field(1, ge=1)  # self-critical epochs
    samples: int = Field(5, ge=2)  # captions sampled per image and step
    learning_rate: float = Field(1e-5, gt=0.0)  # constant
    baseline: Literal["mean", "greedy"] = "mean"  # the other samples' mean reward, or the greedy caption's
    batch_size: int = Field(32, ge=1)  # images per step


class TrainingConfig(_Section):
    """How the captioner trains: cross-entropy epochs, then optional self-critical ones; which checkpoint is kept."""

    subset_ratio: float = Field(1.0, gt=0.0, le=1.0)  # share of training images, sampled from `seed`
    batch_size: int = Field(64, ge=1)  # captions per step
    num_epochs: int = Field(10, ge=0)  # cross-entropy epochs; 0 with `scst` and `init_from`: self-critical only
    learning_rate: float = Field(1e-4, gt=0.0)  # AdamW, for the mapper and the trained decoder blocks
    encoder_learning_rate: float | None = Field(None, gt=0.0)  # the trained encoder blocks' (None: learning_rate / 10)
    weight_decay: float = Field(0.01, ge=0.0)  # AdamW weight decay
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # after warmup
    warmup_steps: int = Field(0, ge=0)  # linear warmup from 0 to `learning_rate`
    grad_clip: float | None = Field(1.0, gt=0.0)  # max gradient norm; None disables
    one_caption_per_image: bool = False  # each epoch samples one reference per image
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # cross-entropy label smoothing
    feature_crop: float | None = Field(None, gt=0.0, le=1.0)  # pool a random window of the grid, sides >= this share
    scst: ScstConfig | None = None  # self-critical epochs after the `num_epochs` cross-entropy ones
    init_from: str | None = None  # start from this run's best checkpoint (run id or name) or checkpoint folder
    best_metric: str = "val_loss"  # the checkpoint kept is best by this metric
    best_mode: Literal["min", "max"] | None = None  # None: min for losses, max otherwise
    enable_GPU: bool = False  # CUDA with bf16 autocast when available
    trained_model_path: str | None = None  # also copy the best checkpoint here (safetensors + JSON)
    monitoring_plots_path: str | None = None  # also copy the curves PNG here

    @model_validator(mode="after")
    def _something_to_train(self) -> TrainingConfig:
        if self.num_epochs == 0 and self.scst is None:
            raise ValueError("num_epochs is 0 and `scst` is not set, so there is nothing to train: set num_epochs "
                             "to 1 or more, or add self-critical epochs (`scst`) to a model given by `init_from`")
        return self

    @property
    def total_epochs(self) -> int:
        """Cross-entropy epochs plus self-critical ones."""
        return self.num_epochs + (self.scst.epochs if self.scst else 0)

    @property
    def encoder_lr(self) -> float:
        """The trained encoder blocks' learning rate: `encoder_learning_rate`, else a tenth of `learning_rate`."""
        return self.encoder_learning_rate or self.learning_rate / 10

    @property
    def mode(self) -> Literal["min", "max"]:
        return self.best_mode or metric_mode(self.best_metric)


class EvaluationConfig(_Section):
    """How validation (each epoch) and `capexp evaluate` caption and score."""

    bertscore_model: str = "all-MiniLM-L6-v2"  # registry name, hub id (e.g. roberta-large) or folder
    bertscore_num_layers: int | None = None  # None: bert-score's default for the model
    coco_metrics: bool = True  # BLEU/METEOR/ROUGE-L/CIDEr when Java is available
    max_images: int | None = Field(500, ge=1)  # validation images captioned per epoch; None: all
    batch_size: int = Field(64, ge=1)  # images per decoding batch
    beam_size: int = Field(1, ge=1)  # 1: greedy
    length_penalty: float = 1.0  # beam score / length ** this (1.0: per-token mean log-probability)
    no_repeat_ngram_size: int = Field(0, ge=0)  # >0: no n-gram of this size twice in a caption
    max_caption_tokens: int | None = Field(None, ge=1)  # None: text_tokens_max_length


def metric_mode(metric: str, direction: str | None = None) -> Literal["min", "max"]:
    """"min" or "max": as `direction` ("minimize"/"maximize") says, else min for losses, max otherwise."""
    if direction in ("minimize", "maximize"):
        return "min" if direction == "minimize" else "max"
    return "min" if "loss" in metric else "max"


# ---------------------------------------------------------------------------- the spec
def _default_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d_%H%M%S")


class Spec(_Section):
    """One experiment: everything needed to train, evaluate and track a captioner."""

    id: str = Field(default_factory=_default_id)  # the MLflow run name
    notes: str = ""  # the MLflow run description
    seed: int = 0  # training seed: initialisation, subset sampling, batch order
    clip_config: ClipConfig = ClipConfig()
    gpt2_config: Gpt2Config = Gpt2Config()
    data_paths: DataSpec = Field(default_factory=lambda: GeneratedData(source="generated"))
    training_config: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="before")
    @classmethod
    def _seed_data_format(cls, data: Any) -> Any:
        # The seed's `data_paths` has no `source`: it is the caption-list format.
        if isinstance(data, dict) and isinstance(data.get("data_paths"), dict):
            data_paths = data["data_paths"]
            if "source" not in data_paths:
                data = {**data, "data_paths": {"source": "caption_list", **data_paths}}
        return data

    @model_validator(mode="after")
    def _regions_need_a_grid(self) -> Spec:
        if self.gpt2_config.mapper == "regions" and self.clip_config.features != "grid":
            raise ValueError('gpt2_config.mapper "regions" pools the image\'s grid of features into cells, but '
                             'clip_config.features is "pooled": set clip_config.features to "grid" (or use mapper "mlp")')
        return self

    @model_validator(mode="after")
    def _crops_need_a_grid_and_the_mlp(self) -> Spec:
        if self.training_config.feature_crop is None:
            return self
        if self.clip_config.train_last_blocks:
            raise ValueError("training_config.feature_crop pools a window of the cached grid, but "
                             "clip_config.train_last_blocks trains the blocks that make the grid: remove one of them")
        if self.clip_config.features != "grid":
            raise ValueError('training_config.feature_crop pools a random window of the image\'s grid of features, but '
                             'clip_config.features is "pooled": set clip_config.features to "grid" (or remove feature_crop)')
        if self.gpt2_config.mapper != "mlp":
            raise ValueError(f'training_config.feature_crop feeds the pooled window to the MLP mapper, but '
                             f'gpt2_config.mapper is "{self.gpt2_config.mapper}": set the mapper to "mlp" '
                             f'(or remove feature_crop)')
        return self
