"""Captions for a folder of images from tracked runs, checkpoint folders, logged or registered models.

Any source (run id, run name, checkpoint folder, `models:/m-...`, `models:/NAME@alias`) becomes a `Checkpoint`:
its folder (`model.safetensors` + `capexp.json`, see capexp.model.captioner, read in place when the
MLflow store is local), its spec and its encoder's card, without loading weights. `load()`
turns it into a `Captioner`, a ClipCap ready to run. `caption_folder` encodes the images once
per distinct encoder through the feature cache, so models that share an encoder share its
features, loads one model at a time (or, for an ensemble, its members together), and writes the
seed's CSV: `image_id, model_name, caption`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capexp.errors import CapexpError, warn
from capexp.tracking import experiment_runs, find_run, model_checkpoint, run_checkpoint  # re-exported: runs as caption sources

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from capexp.backbones import EncoderCard
    from capexp.model.decoding import DecodeOptions
    from capexp.model.captioner import CheckpointMeta, ClipCap
    from capexp.spec.schema import Spec

__all__ = [
    "Checkpoint",
    "Captioner",
    "FolderCaptions",
    "find_checkpoint",
    "load_captioner",
    "select_checkpoints",
    "check_ensemble",
    "find_run",
    "run_checkpoint",
    "experiment_runs",
    "read_checkpoint",
    "list_images",
    "image_refs",
    "unique_names",
    "ImageCaptions",
    "caption_refs",
    "caption_folder",
]

log = logging.getLogger("capexp")


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
        from capexp.backbones import decoder_blocks, load_decoder
        from capexp.model.captioner import build_model, load_state
        from capexp.model.vocabulary import restrict_vocabulary

        import torch

        with torch.random.fork_rng(devices=[]):  # seeded as the run seeded it: a randomly initialised
            torch.manual_seed(self.spec.seed)     # preset gets the frozen blocks it trained with
            decoder, tokenizer = load_decoder(self.spec.gpt2_config.model, self.spec.gpt2_config.tokenizer)
        if self.meta.vocabulary:
            tokenizer = restrict_vocabulary(decoder, tokenizer, self.meta.vocabulary)
        model = build_model(self.spec, decoder, decoder_blocks(decoder), self.card.feature_dim)
        load_state(model, self.folder)
        dev = _device(device)
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
        import torch

        if self._encoder is None:
            self._encoder = self.card.load(self.device)
        captions: list[str] = []
        for start in range(0, len(images), batch_size):
            pixels = self.card.preprocess(images[start : start + batch_size]).to(self.device)  # (B, 3, H, W)
            with torch.inference_mode():
                features = self._encoder(pixels)  # (B, F) or (B, T, F)
            captions += self.caption_features(features, beam=beam, batch_size=batch_size)
        return captions


@dataclass
class FolderCaptions:
    """What `caption_folder` wrote."""

    output: Path
    images: int  # images captioned
    models: list[str]  # model_name of each captioner, in CSV order
    skipped: list[tuple[str, str]]  # (file name, reason) of unreadable files
    seconds: float


def _device(device: str | None) -> torch.device:
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def read_checkpoint(folder: Path, *, origin: str | None = None) -> Checkpoint:
    """A checkpoint folder written by a run (`model.safetensors` + `capexp.json`); reads no weights."""
    from capexp.backbones import resolve_encoder
    from capexp.model.captioner import CheckpointMeta, is_checkpoint

    origin = origin or str(folder)
    if not is_checkpoint(folder):
        raise CapexpError(
            f"{origin}: {folder} is not a capexp checkpoint (it needs model.safetensors and capexp.json). "
            f"Pass a run id, a run name, a `models:/m-...` or `models:/NAME@alias` URI, or a checkpoint folder."
        )
    meta = CheckpointMeta.read(folder)
    spec = meta.spec
    card = resolve_encoder(spec.clip_config.model, spec.clip_config.image_size, spec.clip_config.features)
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
    from capexp.tracking import use_store

    text = str(source)
    if Path(text).is_dir():
        folder = Path(text)
        return read_checkpoint(folder / "checkpoint" if (folder / "checkpoint").is_dir() else folder)
    use_store(tracking_uri)
    if text.startswith("models:/"):
        return read_checkpoint(model_checkpoint(text, f"--model {text}"), origin=f"--model {text}")
    return read_checkpoint(run_checkpoint(find_run(text, experiment), text), origin=f"run {text!r}")


def load_captioner(
    source: str | Path, *, experiment: str | None = None, device: str | None = None, tracking_uri: str | None = None
) -> Captioner:
    """`find_checkpoint(...)`, loaded on `device` (None: CUDA when available, else CPU)."""
    return find_checkpoint(source, experiment=experiment, tracking_uri=tracking_uri).load(device)


def model_sources(sources: list[str], *, experiment: str | None = None, tracking_uri: str | None = None) -> list[str]:
    """`sources` as given (run ids or names, `models:/` URIs, folders); none given: every run with a
    checkpoint in `experiment`."""
    if not sources and experiment:
        return experiment_runs(experiment, tracking_uri=tracking_uri)
    return list(sources)


def select_checkpoints(sources: list[str], *, experiment: str | None = None,
                       tracking_uri: str | None = None) -> list[Checkpoint]:
    """The checkpoints of `model_sources(sources, ...)`."""
    sources = model_sources(sources, experiment=experiment, tracking_uri=tracking_uri)
    if not sources:
        raise CapexpError("capexp caption needs models: give --run ID, --model URI, or --experiment NAME.")
    return [find_checkpoint(s, experiment=experiment, tracking_uri=tracking_uri) for s in sources]


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


def list_images(images_dir: Path) -> list[Path]:
    """Files in `images_dir` (not below) with an extension Pillow can open, sorted by name."""
    from PIL import Image

    if not images_dir.is_dir():
        raise CapexpError(f"{images_dir} is not a folder. Pass the folder that holds the images to caption.")
    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    files = sorted(p for p in images_dir.iterdir()
                   if p.suffix.lower() in readable and not p.name.startswith(".") and p.is_file())
    if not files:
        raise CapexpError(f"{images_dir} holds no image files (looked for {', '.join(sorted(readable)[:8])}, ...).")
    return files


def image_refs(files: list[Path]) -> list[Any]:
    from capexp.data import ImageRef

    refs = []
    for path in files:
        st = path.stat()
        refs.append(ImageRef(path.name, f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}", path.resolve()))
    return refs


def unique_names(checkpoints: list[Checkpoint]) -> list[str]:
    """Run names, with `#2`, `#3`... added where two checkpoints share one."""
    names = [c.name for c in checkpoints]
    out = []
    for i, name in enumerate(names):
        out.append(name if names.count(name) == 1 else f"{name}#{names[:i].count(name) + 1}")
    return out


@dataclass
class ImageCaptions:
    """What `caption_refs` made: the images it could read and every model's caption of each."""

    images: list[Any]  # the ImageRefs captioned, in the order given
    models: list[str]  # model_name of each captioner (run names, `#2`... where two share one)
    captions: list[list[str]]  # per model, one caption per image in `images`
    skipped: list[tuple[str, str]]  # (image_id, reason) of unreadable images


def caption_refs(
    refs: list[Any],
    checkpoints: list[Checkpoint],
    *,
    beam: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
    ensemble: bool = False,
) -> ImageCaptions:
    """Caption images (`capexp.data.ImageRef`s) with every checkpoint.

    Each distinct encoder (`card.cache_id`) runs once over the images through the feature cache,
    so a second call (say, with a newly trained run) encodes nothing; models are loaded one at a
    time. With `ensemble`, the checkpoints decode as one model instead (`check_ensemble`; its
    model_name joins theirs with "+"), all loaded at once. Images that cannot be read are skipped
    (encode_images warns once). `beam` None: each run's own `evaluation.beam_size` (an
    ensemble's: the first run's). `device` None: CUDA when available, else CPU.
    """

    if not checkpoints:
        raise CapexpError("no model to caption with: pass --run, --experiment or --model.")
    if ensemble:
        check_ensemble(checkpoints)
    dev = _device(device)
    names = unique_names(checkpoints)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(checkpoints):
        groups.setdefault(c.card.cache_id, []).append(i)
    todo, encoded, skipped = _encode_per_encoder(checkpoints, groups, refs, dev, batch_size)
    if ensemble:
        (features,) = encoded.values()
        captions = [_caption_as_ensemble(checkpoints, features, dev, beam, batch_size)]
        names = ["+".join(names)]
    else:
        captions = _caption_per_model(checkpoints, groups, encoded, names, len(todo), dev, beam, batch_size)
    return ImageCaptions([refs[i] for i in todo], names, captions, skipped)


def caption_folder(
    images_dir: Path,
    checkpoints: list[Checkpoint],
    output_csv: Path,
    *,
    beam: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
    ensemble: bool = False,
) -> FolderCaptions:
    """Caption every image in `images_dir` with every checkpoint (`ensemble`: with all of them as one model);
    write `image_id, model_name, caption`.

    Rows are grouped by image (sorted file names), then by model in the given order; the
    captions come from `caption_refs` (one encoding per encoder, through the feature cache).
    Files that cannot be read are skipped and listed in one warning; when none can be read, a
    `CapexpError` (exit 2) and no CSV.
    """
    import time

    started = time.perf_counter()
    made = caption_refs(image_refs(list_images(images_dir)), checkpoints, beam=beam, batch_size=batch_size,
                        device=device, ensemble=ensemble)
    if not made.images:
        first = "; ".join(f"{name}: {reason}" for name, reason in made.skipped[:3])
        raise CapexpError(
            f"{images_dir}: none of its {len(made.skipped)} image files could be read ({first}"
            f"{'; ...' if len(made.skipped) > 3 else ''}), so nothing was captioned and {output_csv} was not written. "
            f"Pass a folder of images Pillow can open (images past Pillow's decompression-bomb limit are refused)."
        )
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    with output_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "model_name", "caption"])
        for row, ref in enumerate(made.images):
            for name, texts in zip(made.models, made.captions):
                w.writerow([ref.image_id, name, texts[row]])
    return FolderCaptions(output_csv, len(made.images), made.models, made.skipped, time.perf_counter() - started)


def _encode_per_encoder(checkpoints: list[Checkpoint], groups: dict[str, list[int]], refs: list[Any],
                        dev: torch.device, batch_size: int) -> tuple[list[int], dict[str, Any], list[tuple[str, str]]]:
    """Each distinct encoder over the images (its own progress bar): the indices into `refs` every
    encoder could read, each encoder's features of those, and the unreadable files. An unreadable
    file is warned about (by encode_images) once: later encoders never see it."""
    from capexp.backbones.feature_cache import encode_images

    encoded: dict[str, tuple[list[int], Any]] = {}  # cache_id -> (indices into refs, features)
    todo = list(range(len(refs)))
    skipped: list[tuple[str, str]] = []
    for cache_id, members in groups.items():
        enc = encode_images(checkpoints[members[0]].card, [refs[i] for i in todo], device=dev, batch_size=batch_size)
        skipped += enc.skipped
        todo = [todo[j] for j in enc.kept]
        encoded[cache_id] = (todo, enc.features)
    features: dict[str, Any] = {}
    for cache_id, (kept, feats) in encoded.items():  # keep only what every encoder read
        rows = [j for j, i in enumerate(kept) if i in set(todo)] if len(kept) != len(todo) else None
        features[cache_id] = feats if rows is None else feats[rows]
    return todo, features, skipped


def _caption_per_model(checkpoints: list[Checkpoint], groups: dict[str, list[int]], features: dict[str, Any],
                       names: list[str], n_images: int, dev: torch.device, beam: int | None,
                       batch_size: int) -> list[list[str]]:
    """Every model's captions of the encoded images (under one progress bar), one model in memory at a time."""
    from tqdm.auto import tqdm

    captions: list[list[str]] = [[] for _ in checkpoints]  # per model, in image order
    with tqdm(total=n_images * len(checkpoints), desc="captioning", unit="caption") as bar:
        for cache_id, members in groups.items():
            for i in members:
                bar.set_postfix(model=names[i])
                captioner = checkpoints[i].load(str(dev))
                for start in range(0, n_images, batch_size):
                    batch = captioner.caption_features(features[cache_id][start : start + batch_size], beam=beam,
                                                       batch_size=batch_size)
                    captions[i] += batch
                    bar.update(len(batch))
                del captioner  # one model in memory at a time
    return captions


def _caption_as_ensemble(checkpoints: list[Checkpoint], features: torch.Tensor, dev: torch.device, beam: int | None,
                         batch_size: int) -> list[str]:
    """The ensemble's captions of the encoded images, decoded as the first run's `evaluation` says."""
    from capexp.model.decoding import decode

    members = [c.load(str(dev)) for c in checkpoints]
    first = members[0]
    return decode([m.model for m in members], first.tokenizer, features, first.options(beam), batch_size=batch_size,
                  device=dev)
