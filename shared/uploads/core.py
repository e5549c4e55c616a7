"""The shared core of upload parsing: the error, the limits, the parsed result and the checks
every format makes.

Owns DatasetError (with the HTTP status to answer), Limits and DEFAULT_LIMITS, ParsedDataset,
and the checks shared by the format modules: upload size, decoded size, image shape, labels,
class names, and the errors zipfile raises (npz files are zips too). Names with a leading
underscore are shared by the modules of shared.uploads only; other code imports the public
names from shared.uploads.
"""

from __future__ import annotations

import math
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from shared.schemas import first_unprintable

__all__ = ["DEFAULT_LIMITS", "MAX_CLASS_NAME", "DatasetError", "Limits", "ParsedDataset"]


class DatasetError(ValueError):
    """A rejected upload. `status` is the HTTP status to answer with (400 malformed, 413 too big,
    422 semantically invalid e.g. labels out of range, 429 over the owner's data set count,
    503 no parse slot free: retry); str(exc) is a one-line human message naming the problem
    (e.g. "images.idx: bad magic number 0x00000802, expected 0x00000803"). `field` names the
    form field at fault when it is not a file (e.g. "name_encoding"); `retry_after_s` is set
    when retrying later may succeed."""

    status: int

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        # File and entry names come from the user; escape control characters so the message
        # stays one line whatever they contain.
        one_line = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)
        super().__init__(one_line)
        self.status = status
        self.field = field
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied while parsing; exceeding a size bound is a 413."""

    max_upload_bytes: int = 256 * 2**20  # compressed bytes received
    max_decoded_bytes: int = 256 * 2**20  # x.nbytes after decoding / zip uncompressed total
    max_images: int = 1_000_000
    max_side: int = 1024  # H and W each
    max_classes: int = 1000


DEFAULT_LIMITS = Limits()
# Data we stored ourselves was validated on the way in; re-reading it must not depend on
# whatever the upload limits are today.
_NO_LIMITS = Limits(
    max_upload_bytes=sys.maxsize,
    max_decoded_bytes=sys.maxsize,
    max_images=sys.maxsize,
    max_side=sys.maxsize,
    max_classes=sys.maxsize,
)


# eq=False: the generated __eq__/__hash__ would compare numpy arrays and raise.
@dataclass(frozen=True, eq=False)
class ParsedDataset:
    """A validated data set. Compare fields with np.array_equal, not ==."""

    x: np.ndarray  # uint8, shape (N, H, W, C), C in {1, 3}
    y: np.ndarray | None  # int64 (N,), labels in [0, num_classes) or None when unlabelled
    classes: list[str]  # class names, index = label; [] if y is None
    format: str  # "idx" | "npz" | "zip"


# What zipfile.ZipFile() raises on a damaged or crafted archive (an entry name flagged UTF-8
# that is not, a central directory with impossible offsets, ...).
_ZIP_OPEN_ERRORS = (
    zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error, NotImplementedError
)  # fmt: skip
# What reading a member raises besides: encrypted (RuntimeError), unknown compression or
# strong encryption (NotImplementedError), a corrupt stream (zlib.error).
_ZIP_READ_ERRORS = (*_ZIP_OPEN_ERRORS, RuntimeError, zlib.error)

MAX_CLASS_NAME = 64  # characters; class names are shown in charts and job results

# --------------------------------------------------------------------------------------------
# Shared checks


def _check_upload_size(name: str, size: int, limits: Limits) -> None:
    if size == 0:
        raise DatasetError(400, f"{name}: file is empty; expected a data set")
    if size > limits.max_upload_bytes:
        raise DatasetError(
            413, f"{name}: upload is {size} bytes; the limit is {limits.max_upload_bytes} bytes"
        )


def _check_decoded_size(name: str, what: str, nbytes: int, limits: Limits) -> None:
    """A 413 when `nbytes` (bytes after decoding) passes `limits.max_decoded_bytes`; the
    message reads "<name>: <what> <nbytes> bytes; the limit is ..."."""
    if nbytes > limits.max_decoded_bytes:
        raise DatasetError(
            413,
            f"{name}: {what} {nbytes} bytes; the limit is {limits.max_decoded_bytes} bytes",
        )


def _check_shape(name: str, shape: tuple[int, ...], limits: Limits) -> None:
    """Check an (N, H, W[, C]) uint8 shape against the limits before or after allocating it."""
    n, h, w = shape[:3]
    if n < 1:
        raise DatasetError(422, f"{name}: contains no images; expected at least 1")
    if n > limits.max_images:
        raise DatasetError(413, f"{name}: {n} images; the limit is {limits.max_images}")
    if not (1 <= h <= limits.max_side and 1 <= w <= limits.max_side):
        raise DatasetError(
            422,
            f"{name}: images are {h}x{w} (HxW); height and width must each be between 1 and "
            f"{limits.max_side}",
        )
    _check_decoded_size(name, "decoded images take", math.prod(shape), limits)


def _check_labels(
    name: str, y: np.ndarray, n_images: int, classes: list[str] | None, limits: Limits
) -> tuple[np.ndarray, list[str]]:
    """Validate 1-D integer labels; derive class names "0".."K-1" when none are given."""
    if y.dtype.kind not in "iu":
        raise DatasetError(422, f"{name}: labels have dtype {y.dtype}; expected integers")
    if y.ndim != 1:
        raise DatasetError(
            422, f"{name}: labels have shape {y.shape}; expected a 1-D array of {n_images} labels"
        )
    if len(y) != n_images:
        raise DatasetError(
            422, f"{name}: {len(y)} labels but {n_images} images; expected one label per image"
        )
    if y.min() < 0:
        i = int(np.argmin(y))
        raise DatasetError(
            422, f"{name}: label {int(y[i])} at index {i} is negative; labels must be >= 0"
        )
    top = int(y.max())
    if classes is None:
        if top + 1 > limits.max_classes:
            raise DatasetError(
                422,
                f"{name}: labels go up to {top}, i.e. {top + 1} classes; at most "
                f"{limits.max_classes} classes are allowed",
            )
        classes = [str(i) for i in range(top + 1)]
    elif top >= len(classes):
        i = int(np.argmax(y >= len(classes)))
        raise DatasetError(
            422,
            f"{name}: label {int(y[i])} out of range for {len(classes)} classes (at index {i}); "
            f"expected labels 0..{len(classes) - 1}",
        )
    return y.astype(np.int64), classes


def _check_class_name(where: str, cls: str) -> None:
    """Class names are what charts and job results show: short, one line, no controls."""
    if len(cls) > MAX_CLASS_NAME:
        raise DatasetError(
            422,
            f"{where}: class name {_short(cls)!r} is {len(cls)} characters; at most "
            f"{MAX_CLASS_NAME} are allowed",
        )
    bad = first_unprintable(cls)
    if bad is not None:
        raise DatasetError(
            422,
            f"{where}: class name {_short(cls)!r} contains the invisible or control character "
            f"{bad!r} (U+{ord(bad):04X}); if the zip was made with another code page, give it "
            "as name_encoding",
        )
    if not cls.strip():
        raise DatasetError(422, f"{where}: a class name is blank; expected visible text")


def _short(text: str, most: int = 80) -> str:
    """A user-given name cut to `most` characters for messages."""
    return text if len(text) <= most else text[:most] + "..."
