"""The MLflow pyfunc model `capexp register` logs, as models-from-code: MLflow stores this file.

MLflow runs this file when the model loads (`mlflow models serve`, `mlflow.pyfunc.load_model`);
the captioner comes from the logged `checkpoint` artifact (safetensors + JSON), never from a
pickle. Input: a column `image` of image file bytes (base64 strings over JSON); output: a
column `caption`. See capexp.serving for the request body.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

__all__ = ["CaptionModel"]


def _image(value: Any, row: int):
    """An RGB image from file bytes (or their base64 text); a bad row is the caller's error (HTTP 400)."""
    from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        data = base64.b64decode(value, validate=False) if isinstance(value, str) else bytes(value)
        with Image.open(io.BytesIO(data)) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, TypeError) as e:
        raise MlflowException(
            f"row {row} of column `image` is not a readable image ({type(e).__name__}: {e}); send the image "
            f"file's bytes, base64-encoded in JSON.", error_code=INVALID_PARAMETER_VALUE,
        ) from None


class CaptionModel(PythonModel):
    """Image bytes in, one caption per image out, decoded as the run's `evaluation` section says."""

    def load_context(self, context) -> None:
        from capexp.inference import read_checkpoint
        from capexp.tracking import ARTIFACT_CHECKPOINT

        self.captioner = read_checkpoint(Path(context.artifacts[ARTIFACT_CHECKPOINT])).load()

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = [_image(value, row) for row, value in enumerate(model_input["image"])]
        beam = int((params or {}).get("beam_size") or 0) or None
        return pd.DataFrame({"caption": self.captioner.caption_images(images, beam=beam)})


mlflow.models.set_model(CaptionModel())
