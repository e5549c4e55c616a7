"""IDX uploads (the MNIST format): an images file (N, H, W) and an optional labels file (N,),
each raw or gzipped, unsigned bytes only.

Owns parse_idx and write_idx. The header's shape is checked against the limits before any
pixel is read, and a gzip stream is decompressed straight into an array of the declared size.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib

import numpy as np

from shared.uploads.core import (
    DEFAULT_LIMITS,
    DatasetError,
    Limits,
    ParsedDataset,
    _check_labels,
    _check_shape,
    _check_upload_size,
)

__all__ = ["parse_idx", "write_idx"]

_IDX_UBYTE = 0x08
_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int",
              0x0D: "float", 0x0E: "double"}  # fmt: skip
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _read_exactly(stream: io.BufferedIOBase, size: int) -> tuple[np.ndarray, int]:
    """(buffer of `size` bytes, how many were read) from a raw or gzip stream."""
    out = np.empty(size, dtype=np.uint8)
    view, got = out.data, 0
    while got < size:
        n = stream.readinto(view[got : got + _CHUNK])
        if not n:
            break
        got += n
    return out, got


def _count_rest(stream: io.BufferedIOBase) -> tuple[int, bool]:
    """(bytes left in the stream, up to _CHUNK; whether there are more than that)."""
    rest = stream.read(_CHUNK)
    return len(rest), bool(rest) and bool(stream.read(1))


def _read_idx(name: str, data: bytes, dims: int, limits: Limits) -> np.ndarray:
    """Decode one IDX file (raw or gzipped) of unsigned bytes with exactly `dims` dimensions.

    The header's shape is checked against `limits` before any pixel is decompressed, and a
    gzip stream is decompressed straight into an array of the declared size: a gzip bomb is
    refused on its header, or stops at the declared size (trailing bytes)."""
    gzipped = data[:2] == _GZIP_MAGIC
    try:
        stream: io.BufferedIOBase = (
            gzip.GzipFile(fileobj=io.BytesIO(data)) if gzipped else io.BytesIO(data)
        )
        with stream:
            return _decode_idx(name, stream, dims, limits, gzipped)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(400, f"{name}: corrupt gzip data ({exc})") from exc


def _decode_idx(
    name: str, stream: io.BufferedIOBase, dims: int, limits: Limits, gzipped: bool
) -> np.ndarray:
    expected_magic = f"0x{(_IDX_UBYTE << 8) | dims:08x}"
    what = "IDX3 images" if dims == 3 else "IDX1 labels"
    head = stream.read(4)
    if len(head) < 4:
        raise DatasetError(400, f"{name}: too short for an IDX header; expected {what}")
    bad_magic = DatasetError(
        400,
        f"{name}: bad magic number 0x{int.from_bytes(head, 'big'):08x}, expected "
        f"{expected_magic} ({what})",
    )
    if head[0] or head[1]:
        raise bad_magic
    if head[2] != _IDX_UBYTE:
        kind = _IDX_TYPES.get(head[2], "unknown")
        raise DatasetError(
            400,
            f"{name}: unsupported IDX data type 0x{head[2]:02x} ({kind}); only 0x08 "
            "(unsigned byte) is accepted",
        )
    if head[3] != dims:
        raise bad_magic
    header = 4 + 4 * dims
    dims_raw = stream.read(4 * dims)
    if len(dims_raw) < 4 * dims:
        raise DatasetError(
            400, f"{name}: IDX header truncated ({4 + len(dims_raw)} of {header} bytes)"
        )
    shape = struct.unpack(f">{dims}I", dims_raw)
    if dims == 3:
        _check_shape(name, (*shape, 1), limits)  # before a single pixel is decompressed
    elif shape[0] > limits.max_images:
        raise DatasetError(413, f"{name}: {shape[0]} labels; the limit is {limits.max_images}")
    size = math.prod(shape)
    out, got = _read_exactly(stream, size)
    rest, more = _count_rest(stream) if got == size else (0, False)
    if got < size or rest:
        problem = "truncated" if got < size else "trailing bytes"
        has = f"more than {header + got + rest}" if more else f"{header + got + rest}"
        kind = "decompresses to" if gzipped else "has"
        raise DatasetError(
            400,
            f"{name}: {problem}: header says shape {shape}, i.e. {header + size} bytes, "
            f"but the file {kind} {has} bytes",
        )
    return out.reshape(shape)


def _parse_idx(
    images_name: str, images: bytes, labels_name: str, labels: bytes | None, limits: Limits
) -> ParsedDataset:
    _check_upload_size(images_name, len(images), limits)
    if labels is not None:
        _check_upload_size(labels_name, len(labels), limits)
        _check_upload_size(f"{images_name} + {labels_name}", len(images) + len(labels), limits)
    x = _read_idx(images_name, images, 3, limits)[..., np.newaxis]
    _check_shape(images_name, x.shape, limits)
    if labels is None:
        return ParsedDataset(x=x, y=None, classes=[], format="idx")
    raw_y = _read_idx(labels_name, labels, 1, limits)
    y, classes = _check_labels(labels_name, raw_y, len(x), None, limits)
    return ParsedDataset(x=x, y=y, classes=classes, format="idx")


def parse_idx(
    images: bytes, labels: bytes | None, limits: Limits = DEFAULT_LIMITS
) -> ParsedDataset:
    """Parse MNIST-style IDX images (N, H, W) and optional labels (N,), each raw or gzipped."""
    return _parse_idx("images", images, "labels", labels, limits)


def write_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array of shape (N, H, W) as IDX3 or (N,) as IDX1 (raw, not gzipped)."""
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(
            f"write_idx needs a uint8 array of shape (N,) or (N, H, W), "
            f"got {array.dtype} {array.shape}"
        )
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()
