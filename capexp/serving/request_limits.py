"""What the served model accepts in one request, and how a refusal reaches the client.

`request_images` turns the request's `image` column into RGB images, checking before it
decodes anything: at most `CAPEXP_SERVE_MAX_ROWS` rows, at most `CAPEXP_SERVE_MAX_BYTES` of image
file bytes in all, at most `CAPEXP_SERVE_MAX_PIXELS` pixels in all (width x height from each
image's header, before any `capexp.data.images` pixel cap shrinks it). Each image is
then read through `capexp.data.images.read_image`. A request past a limit, or with a row that is not a
readable image, is a `RequestRejected`: HTTP 400 with a one-line message. `one_line_errors`
turns every other error of the model into a one-line HTTP 500 whose detail stays in the server
log: no traceback or file path reaches the client.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from capexp.data.images import UnreadableImage, image_size, read_image

__all__ = ["RequestLimits", "RequestRejected", "one_line_errors", "request_images"]

log = logging.getLogger("capexp")

F = TypeVar("F", bound=Callable[..., Any])


class RequestRejected(MlflowException):
    """An error whose message reaches the HTTP client as it is: one line.

    MLflow's scoring server rewrites the message of an error raised by `predict` to begin with
    the whole request data; this one keeps its own.
    """

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE) -> None:
        self._line = " ".join(message.split())
        super().__init__(self._line, error_code=error_code)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:  # MLflow's rewrite is ignored: the line stays as it was
        pass


@dataclass(frozen=True)
class RequestLimits:
    """Per request: rows, image file bytes in all, decoded pixels in all."""

    rows: int = 32
    bytes: int = 32 * 1024 * 1024
    pixels: int = 128 * 1024 * 1024

    @classmethod
    def from_env(cls) -> RequestLimits:
        """The defaults, each overridden by $CAPEXP_SERVE_MAX_ROWS / _BYTES / _PIXELS when set."""
        values = {}
        for field in ("rows", "bytes", "pixels"):
            name = f"CAPEXP_SERVE_MAX_{field.upper()}"
            text = os.environ.get(name, "").strip()
            if text:
                if not text.isdigit() or int(text) < 1:
                    raise ValueError(f"${name} is {text!r}: set it to a whole number above 0, or unset it.")
                values[field] = int(text)
        return cls(**values)


def _file_bytes(value: Any, row: int) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as e:
            raise RequestRejected(f"row {row} of column `image` is not base64 ({e}); send the image file's "
                                  f"bytes, base64-encoded in JSON.") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise RequestRejected(f"row {row} of column `image` is a {type(value).__name__}; send the image file's bytes, "
                          f"base64-encoded in JSON.")


def request_images(column: Iterable[Any], limits: RequestLimits | None = None) -> list[Any]:
    """The images of a request's `image` column as RGB, after checking the request against `limits`."""
    limits = limits or RequestLimits.from_env()
    values = list(column)
    if len(values) > limits.rows:
        raise RequestRejected(f"the request has {len(values)} rows; this server takes at most {limits.rows} "
                              f"images per request (CAPEXP_SERVE_MAX_ROWS). Send them in smaller requests.")
    files = [_file_bytes(value, row) for row, value in enumerate(values)]
    total = sum(len(f) for f in files)
    if total > limits.bytes:
        raise RequestRejected(f"the request's images are {total} bytes; this server takes at most {limits.bytes} "
                              f"per request (CAPEXP_SERVE_MAX_BYTES). Send fewer or smaller images.")
    pixels = 0
    for row, data in enumerate(files):
        w, h = _checked(lambda d=data: image_size(d), row)
        pixels += w * h
    if pixels > limits.pixels:
        raise RequestRejected(f"the request's images have {pixels} pixels in all; this server decodes at most "
                              f"{limits.pixels} per request (CAPEXP_SERVE_MAX_PIXELS). Send fewer or smaller images.")
    return [_checked(lambda d=data: read_image(d), row) for row, data in enumerate(files)]


def _checked(read: Callable[[], Any], row: int) -> Any:
    try:
        return read()
    except UnreadableImage as e:
        raise RequestRejected(f"row {row} of column `image` is not a readable image ({e}); send the image "
                              f"file's bytes, base64-encoded in JSON.") from None


def one_line_errors(predict: F) -> F:
    """`predict` whose errors reach the client as one line: a `RequestRejected` as it is, any other
    error as a one-line HTTP 500 (the traceback goes to the server log only)."""

    @functools.wraps(predict)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return predict(*args, **kwargs)
        except RequestRejected:
            raise
        except Exception as e:  # noqa: BLE001 - the client gets one line, the log the traceback
            log.exception("the caption model failed on a request")
            raise RequestRejected(f"the caption model failed on this request ({type(e).__name__}); the server's "
                                  f"log has the details.", error_code=INTERNAL_ERROR) from None

    return guarded  # type: ignore[return-value]
