"""npz uploads: one .npz file with `x` (uint8 images), optional `y` (integer labels) and
optional `classes` (strings), and the npz form in which accepted data sets are stored.

Owns parse_npz, to_npz_bytes and from_npz_bytes. Each .npy header is checked against the
limits before np.load allocates what it claims; pickled (object) arrays are refused.
"""

from __future__ import annotations

import io
import math
import zipfile
from typing import IO

import numpy as np

from shared.uploads.core import (
    _NO_LIMITS,
    _ZIP_OPEN_ERRORS,
    _ZIP_READ_ERRORS,
    DEFAULT_LIMITS,
    DatasetError,
    Limits,
    ParsedDataset,
    _check_class_name,
    _check_decoded_size,
    _check_labels,
    _check_shape,
    _check_upload_size,
)

__all__ = ["from_npz_bytes", "parse_npz", "read_npz_images", "to_npz_bytes"]

_NPZ_KEYS = ("x", "y", "classes")


def _check_npz_members(
    name: str, data: bytes, limits: Limits, keys: tuple[str, ...] | None = _NPZ_KEYS
) -> None:
    """Bound the npz before np.load: it allocates whatever shape an .npy header claims.
    Members named in `keys` (every member when None) are the ones that will be loaded."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_OPEN_ERRORS as exc:
        raise DatasetError(
            400, f"{name}: not an .npz archive; expected a file written by np.savez(_compressed)"
        ) from exc
    with archive:
        infos = archive.infolist()
        _check_decoded_size(
            name, "uncompressed size is", sum(info.file_size for info in infos), limits
        )
        # Each array's header gives what np.load will allocate; their sum is the budget too
        # (a member's declared file size may be smaller than its header claims).
        declared = 0
        for info in infos:
            if keys is None or info.filename.removesuffix(".npy") in keys:
                declared += _check_npy_header(name, archive, info, limits)
                _check_decoded_size(name, "its arrays take", declared, limits)


def _check_npy_header(
    name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits
) -> int:
    """The bytes np.load will allocate for this member, checked against the limit."""
    key = info.filename.removesuffix(".npy")
    try:
        with archive.open(info) as f:
            header = _read_npy_header(f)
    except _ZIP_READ_ERRORS as exc:
        raise DatasetError(
            400, f"{name}: array {key!r} is not a valid .npy member ({exc})"
        ) from exc
    if header is None:
        raise DatasetError(400, f"{name}: array {key!r} uses an unsupported .npy version")
    shape, dtype = header
    nbytes = math.prod(shape) * dtype.itemsize
    _check_decoded_size(name, f"array {key!r} of shape {shape} takes", nbytes, limits)
    return nbytes


def _read_npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) from an .npy header, or None for versions other than 1.0 and 2.0."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return None
    return shape, dtype


def _load_npz(name: str, data: bytes) -> dict[str, np.ndarray]:
    """Load the arrays we use; anything needing pickle (object arrays) is refused by numpy."""
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except _ZIP_READ_ERRORS as exc:  # e.g. a zip with bytes before its start
        raise DatasetError(400, f"{name}: not a loadable .npz archive ({exc})") from exc
    arrays: dict[str, np.ndarray] = {}
    with npz:
        for key in _NPZ_KEYS:
            if key not in npz.files:
                continue
            try:
                value = npz[key]
            except _ZIP_READ_ERRORS as exc:
                raise DatasetError(
                    400, f"{name}: cannot load array {key!r} ({exc}); expected a plain numpy array"
                ) from exc
            if not isinstance(value, np.ndarray):  # a member without the .npy suffix
                raise DatasetError(400, f"{name}: member {key!r} is not an .npy array")
            arrays[key] = value
    return arrays


def _npz_images(name: str, x: np.ndarray, limits: Limits) -> np.ndarray:
    """Check x's shape and dtype; return it as uint8 (N, H, W, C)."""
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise DatasetError(
            422,
            f"{name}: x has shape {x.shape}; expected (N, H, W) or (N, H, W, C) with C = 1 or 3",
        )
    _check_shape(name, x.shape, limits)
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f":
        raise DatasetError(
            422,
            f"{name}: x has dtype {x.dtype}; expected uint8 pixel values 0..255 (floats are not "
            "accepted; convert with (x * 255).round().astype(np.uint8) if they are in 0..1)",
        )
    if x.dtype.kind not in "iu":
        raise DatasetError(422, f"{name}: x has dtype {x.dtype}; expected uint8 pixel values")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
        raise DatasetError(
            422,
            f"{name}: x has dtype {x.dtype} with values {lo}..{hi}; expected uint8 pixel "
            "values 0..255",
        )
    return x.astype(np.uint8)


def _npz_classes(name: str, classes: np.ndarray, limits: Limits) -> list[str]:
    if classes.ndim != 1 or classes.dtype.kind not in "US":
        raise DatasetError(
            422,
            f"{name}: classes has dtype {classes.dtype} and shape {classes.shape}; expected a "
            "1-D array of strings",
        )
    try:
        names = [c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist()]
    except UnicodeDecodeError as exc:
        raise DatasetError(422, f"{name}: classes are not valid UTF-8 ({exc})") from exc
    if len(names) > limits.max_classes:
        raise DatasetError(
            422, f"{name}: {len(names)} classes; at most {limits.max_classes} are allowed"
        )
    for cls in names:
        _check_class_name(f"{name}: classes", cls)
    if len(set(names)) != len(names):
        dup = next(c for i, c in enumerate(names) if c in names[:i])
        raise DatasetError(422, f"{name}: duplicate class name {dup!r}; names must be unique")
    return names


def _parse_npz(name: str, data: bytes, limits: Limits) -> ParsedDataset:
    _check_upload_size(name, len(data), limits)
    _check_npz_members(name, data, limits)
    arrays = _load_npz(name, data)
    if "x" not in arrays:
        raise DatasetError(
            400,
            f"{name}: missing array 'x'; expected x (uint8 images), optional y (integer labels) "
            "and optional classes (strings)",
        )
    x = _npz_images(name, arrays["x"], limits)
    if "y" not in arrays:
        if "classes" in arrays:
            raise DatasetError(
                422, f"{name}: 'classes' given without 'y'; expected both or neither"
            )
        return ParsedDataset(x=x, y=None, classes=[], format="npz")
    classes = _npz_classes(name, arrays["classes"], limits) if "classes" in arrays else None
    y, class_names = _check_labels(name, arrays["y"], len(x), classes, limits)
    return ParsedDataset(x=x, y=y, classes=class_names, format="npz")


def parse_npz(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ParsedDataset:
    """Parse an .npz with `x` (uint8 images), optional `y` (labels) and optional `classes`."""
    return _parse_npz("npz", data, limits)


def to_npz_bytes(ds: ParsedDataset) -> bytes:
    """Canonical storage form: compressed npz with x, and y and classes when labelled."""
    buf = io.BytesIO()
    if ds.y is None:
        np.savez_compressed(buf, x=ds.x)
    else:
        np.savez_compressed(buf, x=ds.x, y=ds.y, classes=np.array(ds.classes, dtype=np.str_))
    return buf.getvalue()


def from_npz_bytes(data: bytes) -> ParsedDataset:
    """Inverse of to_npz_bytes; the result's format is "npz"."""
    return _parse_npz("stored npz", data, _NO_LIMITS)


def read_npz_images(name: str, data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """The one array of an .npz holding a batch of images (a predict request), as stored:
    every member's .npy header is checked against `limits` before np.load allocates it, and
    pickled arrays are refused. DatasetError (400 not an npz, 413 over the limits, 422 not
    exactly one array) names `name`; the shape and dtype are the caller's to check."""
    _check_upload_size(name, len(data), limits)
    _check_npz_members(name, data, limits, keys=None)
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except _ZIP_READ_ERRORS as exc:
        raise DatasetError(400, f"{name}: not a loadable .npz archive ({exc})") from exc
    with npz:
        if len(npz.files) != 1:
            raise DatasetError(
                422, f"{name}: holds {len(npz.files)} arrays; expected exactly one (the images)"
            )
        try:
            value = npz[npz.files[0]]
        except _ZIP_READ_ERRORS as exc:
            raise DatasetError(
                400, f"{name}: cannot load its array ({exc}); expected a plain numpy array"
            ) from exc
    if not isinstance(value, np.ndarray):
        raise DatasetError(400, f"{name}: its member is not an .npy array")
    return value
