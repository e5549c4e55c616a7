"""The input of POST /v1/jobs/{id}/predict: one PNG or JPEG, or an .npz batch, as uint8
(N, C, H, W) images of the job's data set's shape.

Owns parse_predict_input. Images are read as uploads are (images.read_image: EXIF
orientation, transparency over white, 16-bit grey scaled, the data set's channels), then
resized with Pillow's LANCZOS to the data set's height and width if they differ; an .npz
(npz.read_npz_images: headers checked before anything is allocated) must hold one uint8
array (N, C, H, W) or (N, H, W) of exactly the data set's shape.

Sizes are checked from the headers before anything is decoded: an .npz's arrays (.npy
headers) may take at most `max_decoded_bytes` (PREDICT_DECODED_MAX_BYTES) and at most what
`max_images` images of the job's shape take; an image's pixels (its header's width x height
x channels) at most `max_decoded_bytes`. Past either: a DatasetError 413 naming `file`, with
the numbers. Every other rejection is a DatasetError 422 naming `file`."""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from shared.uploads.core import DatasetError, Limits
from shared.uploads.images import read_image
from shared.uploads.npz import read_npz_images

__all__ = ["FIELD", "parse_predict_input"]

FIELD = "file"
_PNG, _JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with entries; an empty one (an npz of nothing)


def parse_predict_input(
    filename: str,
    data: bytes,
    image: tuple[int, int, int],
    max_images: int,
    max_bytes: int,
    max_decoded_bytes: int,
) -> np.ndarray:
    """uint8 (N, C, H, W), C, H, W = `image`, N <= `max_images`, from an upload of at most
    `max_bytes` bytes (already bounded by the request body limit), decoding to at most
    `max_decoded_bytes` (see the module docstring). The format is told by the bytes (PNG,
    JPEG, or a zip: .npz), not the name."""
    c, h, w = image
    name = f"file {filename!r}" if filename else "file"
    try:
        if data.startswith(_ZIP):
            # At most max_images of the job's shape (the count and shape are checked once
            # loaded: a little room for a batch one image over, refused then by its count).
            batch = min(max_decoded_bytes, (max_images + 1) * c * h * w + 4096)
            limits = Limits(
                max_upload_bytes=max_bytes, max_decoded_bytes=batch, max_images=max_images
            )
            return _batch(name, read_npz_images(name, data, limits), image, max_images)
        if data.startswith((_PNG, _JPEG)):
            # Decoded at its own size first, then resized: any side (a phone's 4032x3024 photo
            # of a digit), bounded by the decoded size alone.
            limits = Limits(
                max_upload_bytes=max_bytes,
                max_decoded_bytes=max_decoded_bytes,
                max_side=sys.maxsize,
            )
            return _resized(read_image(name, data, c, limits), h, w)[np.newaxis]
    except DatasetError as exc:
        if exc.status == 413:  # a size past a limit, with its numbers
            raise DatasetError(
                413,
                f"{exc}: a predict input decodes to at most PREDICT_DECODED_MAX_BYTES "
                f"({max_decoded_bytes}) and at most {max_images} images of {c}x{h}x{w} uint8 "
                f"({max_images * c * h * w} bytes)",
                field=FIELD,
            ) from exc
        raise DatasetError(422, str(exc), field=FIELD) from exc
    raise DatasetError(
        422,
        f"{name} is not a PNG, a JPEG or an .npz; expected one image, or an .npz with one uint8 "
        f"array of up to {max_images} images, shape (N, {c}, {h}, {w})"
        + (f" or (N, {h}, {w})" if c == 1 else ""),
        field=FIELD,
    )


def _resized(pixels: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H', W', C) uint8 -> (C, h, w), resized with LANCZOS when the size differs."""
    if pixels.shape[:2] != (h, w):
        channels = pixels.shape[2]
        img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        out = np.asarray(img.resize((w, h), Image.Resampling.LANCZOS))
        pixels = out[..., np.newaxis] if out.ndim == 2 else out
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _batch(name: str, x: np.ndarray, image: tuple[int, int, int], max_images: int) -> np.ndarray:
    c, h, w = image
    if x.ndim == 3 and c == 1:
        x = x[:, np.newaxis]
    expected = f"(N, {c}, {h}, {w})" + (f" or (N, {h}, {w})" if c == 1 else "")
    if x.ndim != 4 or tuple(x.shape[1:]) != image:
        raise DatasetError(
            422, f"{name}: its array has shape {tuple(x.shape)}; the job's images are {expected}"
        )
    if x.dtype != np.uint8:
        raise DatasetError(
            422, f"{name}: its array has dtype {x.dtype}; expected uint8 pixel values 0..255"
        )
    if not 1 <= len(x) <= max_images:
        raise DatasetError(422, f"{name}: holds {len(x)} images; expected 1 to {max_images}")
    return np.ascontiguousarray(x)
