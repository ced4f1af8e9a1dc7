"""The checkpoint format and finding a trained model: from a folder to a model ready to run.

A checkpoint is a folder of `model.safetensors` + `capexp.json` (`CheckpointMeta`), never pickle.
A run's checkpoint leaves out the decoder blocks it froze, as PEFT adapters do: `capexp.json`
names the base they come from and a SHA-256 of their values, checked when the checkpoint loads.
`find_checkpoint` turns any model source (run id or name, `models:/` URI, folder; resolved by
`capexp.tracking.resolve_model_source`) into a `Checkpoint`: its spec and encoder card, no weights read;
`Checkpoint.load` builds the model as the spec says (`build_captioner`) and loads the weights: a `Captioner`,
ready to caption features or images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from capexp.errors import CapexpError, warn
from capexp.tracking.names import CHECKPOINT_META, CHECKPOINT_WEIGHTS

if TYPE_CHECKING:
    from PIL import Image

    from capexp.backbones import EncoderCard
    from capexp.model.captioner import ClipCap
    from capexp.model.decoding import DecodeOptions
    from capexp.spec.schema import Spec

__all__ = [
    "CheckpointMeta", "frozen_base", "is_checkpoint", "save_checkpoint", "load_state", "Checkpoint", "Captioner",
    "read_checkpoint", "find_checkpoint", "load_captioner", "check_ensemble",
]


@dataclass
class CheckpointMeta:
    """`capexp.json`: what rebuilds a checkpoint's model and tells checkpoints apart."""

    capexp_version: str | None  # None in a file that does not say
    spec: Spec  # the run's spec
    feature_dim: int | None  # the encoder's D when trained
    encoder_cache_id: str | None  # the encoder card's cache_id when trained
    vocabulary: list[int] | None  # kept token ids (`gpt2_config.vocabulary: train`), else None
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    frozen: dict[str, Any] | None = None  # `frozen_base`: the weights left out, None when every weight is in

    def to_json(self) -> dict[str, Any]:
        return {"capexp_version": self.capexp_version, "spec": self.spec.model_dump(mode="json"), "feature_dim": self.feature_dim,
                "encoder_cache_id": self.encoder_cache_id, "vocabulary": self.vocabulary,
                "epoch": self.epoch, "metrics": self.metrics, "frozen": self.frozen}

    @classmethod
    def read(cls, folder: Path) -> CheckpointMeta:
        from capexp.spec.schema import Spec

        data = json.loads((folder / CHECKPOINT_META).read_text())
        return cls(data.get("capexp_version"), Spec.model_validate(data["spec"]), data.get("feature_dim"),
                   data.get("encoder_cache_id"), data.get("vocabulary"), data.get("epoch"), data.get("metrics") or {},
                   data.get("frozen"))


def is_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a checkpoint (weights and `capexp.json`)."""
    return (folder / CHECKPOINT_META).is_file() and (folder / CHECKPOINT_WEIGHTS).is_file()


def _frozen_keys(model: nn.Module) -> set[str]:
    """State-dict keys of frozen parameters (every alias of a tied one)."""
    frozen = {p.data_ptr() for p in model.parameters() if not p.requires_grad}
    return {k for k, v in model.state_dict().items() if v.data_ptr() in frozen}


def _digest(model: nn.Module) -> str:
    """SHA-256 of the frozen parameters' names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            t = p.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def frozen_base(model: nn.Module, base: str) -> dict[str, Any] | None:
    """What a trained-only checkpoint of `model` records about the frozen weights it leaves out:
    `base` (the decoder they come from, e.g. the spec's `gpt2_config.model`), how many tensors, and
    their SHA-256. None when nothing is frozen (the checkpoint then holds every weight)."""
    keys = _frozen_keys(model)
    return {"base": base, "tensors": len(keys), "sha256": _digest(model)} if keys else None


def save_checkpoint(model: ClipCap, folder: Path, meta: CheckpointMeta | dict[str, Any],
                    frozen: dict[str, Any] | None = None) -> Path:
    """Write the model as `model.safetensors` + `capexp.json` (never pickle). Returns the folder.

    With `frozen` (from `frozen_base`), frozen parameters are left out and `capexp.json` records
    them; without it, every weight is written (a self-contained checkpoint).
    """
    from safetensors.torch import save_file, save_model

    folder.mkdir(parents=True, exist_ok=True)
    data = meta.to_json() if isinstance(meta, CheckpointMeta) else dict(meta)
    if frozen is not None or "frozen" in data:
        data["frozen"] = frozen
    if frozen is None:
        save_model(model, str(folder / CHECKPOINT_WEIGHTS))
    else:
        skip, seen, tensors = _frozen_keys(model), set(), {}
        for key, value in model.state_dict().items():
            if key not in skip and value.data_ptr() not in seen:  # a tied tensor once, under its first name
                seen.add(value.data_ptr())
                tensors[key] = value.contiguous()
        save_file(tensors, str(folder / CHECKPOINT_WEIGHTS))
    (folder / CHECKPOINT_META).write_text(json.dumps(data, indent=2, default=str))
    return folder


def load_state(model: ClipCap, folder: Path) -> dict[str, Any]:
    """Load weights saved by `save_checkpoint` into `model` (built as the checkpoint's spec says,
    frozen blocks included); returns the saved metadata.

    A trained-only checkpoint takes its frozen weights from `model` as built: they must be the
    ones it trained with (same SHA-256), else this is a CapexpError saying so.
    """
    from safetensors.torch import load_model

    data = json.loads((folder / CHECKPOINT_META).read_text())
    frozen = data.get("frozen")
    if not frozen:
        load_model(model, str(folder / CHECKPOINT_WEIGHTS))
        return data
    if _digest(model) != frozen["sha256"]:
        raise CapexpError(
            f"{folder}: this checkpoint holds only the trained weights; its {frozen['tensors']} frozen tensors come "
            f"from the base decoder {frozen['base']!r}, but the {frozen['base']!r} loaded here has other values. "
            f"Load it where {frozen['base']!r} is the one it trained on (the same preset package version, hub "
            f"commit or local folder), or use a model `capexp register` made (it holds every weight)."
        )
    missing, unexpected = load_model(model, str(folder / CHECKPOINT_WEIGHTS), strict=False)
    absent = set(missing) - _frozen_keys(model)
    if absent or unexpected:
        raise CapexpError(f"{folder}: the weights do not fit the model its capexp.json describes "
                          f"(missing {sorted(absent)[:3]}, unexpected {sorted(unexpected)[:3]}); the checkpoint is damaged.")
    return data


@dataclass
class Checkpoint:
    """A trained model found but not loaded: enough to group models by encoder and name CSV rows."""

    name: str  # the run name (the spec's id)
    folder: Path  # model.safetensors + capexp.json
    spec: Spec
    card: EncoderCard
    meta: CheckpointMeta  # capexp.json: epoch, metrics, feature_dim, ...

    def load(self, device: str | None = None) -> Captioner:
        """The model on `device` (None: CUDA when available, else CPU), in eval mode."""
        from capexp.model.captioner import build_captioner, default_device

        # the decoder is seeded as the run seeded it (a randomly initialised preset gets the frozen blocks it
        # trained with), without touching the caller's random state; the trained weights come from the file
        with torch.random.fork_rng(devices=[]):
            model, tokenizer = build_captioner(self.spec, self.meta.vocabulary, card=self.card)
        load_state(model, self.folder)
        dev = default_device(device)
        model.to(dev).eval()
        return Captioner(self.name, self.spec, model, tokenizer, self.card, dev, self.meta)


@dataclass
class Captioner:
    """A trained captioner ready to run: model on `device`, in eval mode."""

    name: str  # the run name (the spec's id)
    spec: Spec
    model: ClipCap
    tokenizer: Any
    card: EncoderCard
    device: torch.device
    meta: CheckpointMeta  # capexp.json: epoch, metrics, ...
    _encoder: Any = field(default=None, repr=False)

    def options(self, beam: int | None = None) -> DecodeOptions:
        """The run's decoding (its `evaluation` section); `beam` overrides the beam size."""
        from capexp.model.decoding import DecodeOptions

        return DecodeOptions.from_spec(self.spec, beam=beam)

    def caption_features(self, features: torch.Tensor, *, beam: int | None = None, batch_size: int = 32) -> list[str]:
        """One caption per feature row, decoded as the run's `evaluation` section says (`beam` overrides)."""
        from capexp.model.decoding import decode

        return decode(self.model, self.tokenizer, features, self.options(beam), batch_size=batch_size, device=self.device)

    def caption_images(self, images: list[Image.Image], *, beam: int | None = None, batch_size: int = 32) -> list[str]:
        """Captions of RGB images, encoded directly (no feature cache); the encoder loads on first use."""
        if self._encoder is None:
            self._encoder = self.card.load(self.device)
        captions: list[str] = []
        for start in range(0, len(images), batch_size):
            pixels = self.card.preprocess(images[start : start + batch_size]).to(self.device)  # (B, 3, H, W)
            with torch.inference_mode():
                features = self._encoder(pixels)  # (B, F) or (B, T, F)
            captions += self.caption_features(features, beam=beam, batch_size=batch_size)
        return captions


def read_checkpoint(folder: Path, *, origin: str | None = None) -> Checkpoint:
    """A checkpoint folder written by a run (`model.safetensors` + `capexp.json`); reads no weights."""
    from capexp.backbones import resolve_encoder

    origin = origin or str(folder)
    if not is_checkpoint(folder):
        raise CapexpError(
            f"{origin}: {folder} is not a capexp checkpoint (it needs model.safetensors and capexp.json). "
            f"Pass a run id, a run name, a `models:/m-...` or `models:/NAME@alias` URI, or a checkpoint folder."
        )
    meta = CheckpointMeta.read(folder)
    spec = meta.spec
    c = spec.clip_config
    card = resolve_encoder(c.model, c.image_size, c.features, c.train_last_blocks)
    if meta.feature_dim not in (None, card.feature_dim):
        raise CapexpError(
            f"{origin}: the model was trained on {meta.feature_dim}-dim features but encoder "
            f"{spec.clip_config.model!r} now gives {card.feature_dim}. Install the capexp version that "
            f"trained it ({meta.capexp_version or 'unknown'})."
        )
    if meta.encoder_cache_id not in (None, card.cache_id):
        warn(f"{origin}: encoder {spec.clip_config.model!r} differs from the one the run trained with "
             f"(other weights files or preprocessing); captions may differ from the run's.")
    return Checkpoint(spec.id, folder, spec, card, meta)


def find_checkpoint(source: str | Path, *, experiment: str | None = None, tracking_uri: str | None = None) -> Checkpoint:
    """The checkpoint of a run id, a run name (in `experiment`, else any), a checkpoint folder, a logged
    model (`models:/m-...`) or a registered one (`models:/NAME@alias`)."""
    from capexp.tracking import resolve_model_source

    found = resolve_model_source(source, experiment=experiment, tracking_uri=tracking_uri)
    return read_checkpoint(found.folder, origin=found.origin)


def load_captioner(
    source: str | Path, *, experiment: str | None = None, device: str | None = None, tracking_uri: str | None = None
) -> Captioner:
    """`find_checkpoint(...)`, loaded on `device` (None: CUDA when available, else CPU)."""
    return find_checkpoint(source, experiment=experiment, tracking_uri=tracking_uri).load(device)


def check_ensemble(checkpoints: list[Checkpoint]) -> None:
    """Refuse checkpoints that cannot decode as one ensemble: each must see the first one's image features
    and predict over its tokens (same tokenizer and `gpt2_config.vocabulary` on the same captions)."""
    first = checkpoints[0]
    for other in checkpoints[1:]:
        for what, here, there in (
            ("image features (clip_config)", first.card.cache_id, other.card.cache_id),
            ("tokenizers", first.spec.gpt2_config.tokenizer or first.spec.gpt2_config.model,
             other.spec.gpt2_config.tokenizer or other.spec.gpt2_config.model),
            ("token vocabularies (gpt2_config.vocabulary and the training captions)", first.meta.vocabulary,
             other.meta.vocabulary),
        ):
            if here != there:
                raise CapexpError(
                    f"{first.name!r} and {other.name!r} cannot decode as one ensemble: their {what} differ. Ensemble "
                    f"members must see the same features and predict over the same tokens: pick runs trained with "
                    f"the same clip_config, gpt2_config.tokenizer and gpt2_config.vocabulary on the same training captions."
                )
