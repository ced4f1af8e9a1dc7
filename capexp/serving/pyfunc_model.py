"""The MLflow pyfunc model `capexp register` logs, as models-from-code: MLflow stores this file.

MLflow runs this file when the model loads (`mlflow models serve`, `mlflow.pyfunc.load_model`);
the captioner comes from the logged `checkpoint` artifact (safetensors + JSON), never from a
pickle. Input: a column `image` of image file bytes (base64 strings over JSON); output: a
column `caption`. See capexp.serving.register for the request body, capexp.serving.request_limits for the limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from capexp.serving.request_limits import RequestLimits, one_line_errors, request_images

__all__ = ["CaptionModel"]


class CaptionModel(PythonModel):
    """Image bytes in, one caption per image out, decoded as the run's `evaluation` section says."""

    def load_context(self, context) -> None:
        from capexp.model.checkpoint import read_checkpoint
        from capexp.tracking import ARTIFACT_CHECKPOINT

        self.captioner = read_checkpoint(Path(context.artifacts[ARTIFACT_CHECKPOINT])).load()
        self.limits = RequestLimits.from_env()

    @one_line_errors
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = request_images(model_input["image"], self.limits)
        beam = int((params or {}).get("beam_size") or 0) or None
        return pd.DataFrame({"caption": self.captioner.caption_images(images, beam=beam)})


mlflow.models.set_model(CaptionModel())
