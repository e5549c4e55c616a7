"""Parse and validate user-uploaded image data sets (IDX, npz, zip of class folders).

Torch-free on purpose: the API image imports this, and it must stay small. Every rejection is a
DatasetError carrying the HTTP status to answer with and a one-line message that names the file
and says what was expected. Untrusted sizes (IDX headers, zip and npy headers, gzip streams,
image headers) are checked against Limits before anything of that size is allocated.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import stat
import struct
import sys
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from shared.schemas import first_unprintable

__all__ = [
    "DEFAULT_LIMITS",
    "DatasetError",
    "Limits",
    "ParsedDataset",
    "from_npz_bytes",
    "parse_idx",
    "parse_npz",
    "parse_upload",
    "parse_zip",
    "to_npz_bytes",
    "write_idx",
]


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


_ACCEPTED = (
    "expected one .npz file, one .zip file of <class_name>/<image> entries, or an IDX images file "
    "(name containing 'images' or 'idx3') with an optional labels file (name containing 'labels' "
    "or 'idx1'), raw or gzipped"
)

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


# --------------------------------------------------------------------------------------------
# IDX

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


# --------------------------------------------------------------------------------------------
# npz

_NPZ_KEYS = ("x", "y", "classes")
# What zipfile.ZipFile() raises on a damaged or crafted archive (an entry name flagged UTF-8
# that is not, a central directory with impossible offsets, ...).
_ZIP_OPEN_ERRORS = (
    zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error, NotImplementedError
)  # fmt: skip
# What reading a member raises besides: encrypted (RuntimeError), unknown compression or
# strong encryption (NotImplementedError), a corrupt stream (zlib.error).
_ZIP_READ_ERRORS = (*_ZIP_OPEN_ERRORS, RuntimeError, zlib.error)


def _check_npz_members(name: str, data: bytes, limits: Limits) -> None:
    """Bound the npz before np.load: it allocates whatever shape an .npy header claims."""
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
            if info.filename.removesuffix(".npy") in _NPZ_KEYS:
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


# --------------------------------------------------------------------------------------------
# zip of <class_name>/<image> entries

# Pillow can open dozens of formats, some through external tools (EPS runs Ghostscript);
# uploads only need the common raster ones.
_IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
# Grey images, stored with one channel unless the set mixes in colour. Palette ("P") images
# count as colour even when their palette happens to be grey. "I" modes are 16-bit (or wider).
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)
_ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_UTF8_FLAG = 0x800  # zip general purpose bit 11: the entry name is UTF-8

MAX_CLASS_NAME = 64
_DRIVE = re.compile(r"^[A-Za-z]:")
# What Pillow raises on a damaged file, beyond the documented OSError.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error,
               EOFError, zlib.error)  # fmt: skip


def _short(text: str, most: int = 80) -> str:
    """A user-given name cut to `most` characters for messages."""
    return text if len(text) <= most else text[:most] + "..."


def _check_name_encoding(encoding: str | None) -> None:
    if encoding is None:
        return
    try:
        b"a".decode(encoding)  # LookupError for unknown codecs and for bytes-to-bytes ones
    except UnicodeError:
        pass  # a text encoding in which b"a" alone is not valid (utf-16)
    except LookupError:
        raise DatasetError(
            422,
            f"name_encoding {_short(encoding, 40)!r} is not a known text encoding; expected a "
            "code page such as cp866, cp1251 or cp932",
            field="name_encoding",
        ) from None


def _entry_name(name: str, info: zipfile.ZipInfo, encoding: str | None) -> str:
    """The entry's name as its author wrote it. Names flagged UTF-8 are taken as they are.
    Others are in `encoding` when given; else UTF-8 when they decode as such (macOS and many
    tools write UTF-8 without the flag), else cp437, as the zip standard says."""
    if info.flag_bits & _UTF8_FLAG:
        return info.filename
    raw = info.filename.encode("cp437")  # zipfile decoded the stored bytes as cp437
    if encoding is not None:
        try:
            return raw.decode(encoding)
        except UnicodeError as exc:
            raise DatasetError(
                422,
                f"{name}: entry name {_short(info.filename)!r} is not valid {encoding} ({exc}); "
                "check name_encoding",
                field="name_encoding",
            ) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return info.filename


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


def _check_entry(name: str, path: str, info: zipfile.ZipInfo) -> None:
    """Refuse entries that could escape an extraction directory, whatever we do with them."""
    entry = _short(path)
    if "\\" in path:
        raise DatasetError(
            400, f"{name}: entry {entry!r} contains a backslash; expected '/' separators"
        )
    if path.startswith("/") or _DRIVE.match(path):
        raise DatasetError(400, f"{name}: entry {entry!r} is an absolute path; expected relative")
    if ".." in path.split("/"):
        raise DatasetError(400, f"{name}: entry {entry!r} contains '..'; expected no parent refs")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(400, f"{name}: entry {entry!r} is a symlink; expected regular files")


def _entry_parts(path: str) -> list[str] | None:
    """Path components of an image entry, or None for entries that are skipped silently."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or path.endswith("/") or "__MACOSX" in parts:  # not info.is_dir(): "" breaks it
        return None
    if any(p.startswith(".") for p in parts):  # .DS_Store, ._resource forks, hidden folders
        return None
    return parts


@dataclass(frozen=True)
class _Entry:
    cls: str  # class name, NFC-normalised (macOS zips store names decomposed)
    path: str  # the entry's decoded name, for messages
    info: zipfile.ZipInfo


def _class_entries(name: str, named: list[tuple[str, zipfile.ZipInfo]]) -> list[_Entry]:
    """Image entries with their class, one common top-level folder stripped if present,
    sorted by class then name."""
    entries = [(parts, path, info) for path, info in named if (parts := _entry_parts(path))]
    if not entries:
        raise DatasetError(
            422, f"{name}: contains no images; expected <class_name>/<image file> entries"
        )
    depths = {len(parts) for parts, _, _ in entries}
    if depths == {3} and len({parts[0] for parts, _, _ in entries}) == 1:
        entries = [(parts[1:], path, info) for parts, path, info in entries]
    found: list[_Entry] = []
    for parts, path, info in entries:
        if len(parts) != 2:
            raise DatasetError(
                400,
                f"{name}: entry {_short(path)!r} is not <class_name>/<image file>; expected "
                "class folders, optionally all under one top-level folder",
            )
        cls = unicodedata.normalize("NFC", parts[0])
        _check_class_name(f"{name}: {_short(path)!r}", cls)
        found.append(_Entry(cls, path, info))
    found.sort(key=lambda e: (e.cls, e.path))  # deterministic: class, then file
    return found


def _open_image(name: str, archive: zipfile.ZipFile, entry: _Entry) -> Image.Image:
    where = f"{name}: {_short(entry.path)!r}"
    try:
        raw = archive.read(entry.info)
    except _ZIP_READ_ERRORS as exc:
        raise DatasetError(400, f"{where} cannot be read from the zip ({exc})") from exc
    Image.init()  # registers the format plugins; Image.OPEN is empty until something does
    formats = [f for f in _IMAGE_FORMATS if f in Image.OPEN]
    try:
        return Image.open(io.BytesIO(raw), formats=formats)
    except Image.DecompressionBombError as exc:
        raise DatasetError(422, f"{where} is too large an image ({exc})") from exc
    except (UnidentifiedImageError, *_PIL_ERRORS) as exc:
        raise DatasetError(
            400, f"{where} is not a readable image; expected {', '.join(formats)}"
        ) from exc


def _viewed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows the image: after its EXIF orientation. Headers only."""
    w, h = img.size
    # A PNG's getexif() decodes the pixels to look for an eXIf chunk after them; such late
    # chunks are caught when the image is decoded.
    has_exif = "exif" in img.info or img.format == "TIFF"
    if has_exif and img.getexif().get(ExifTags.Base.Orientation) in _ROTATED:
        return h, w
    return w, h


def _image_layout(
    name: str, archive: zipfile.ZipFile, entries: list[_Entry], limits: Limits
) -> tuple[int, int, int]:
    """(H, W, C) shared by all images, as shown after EXIF orientation, read from headers
    only: no pixels are decoded here. The decoded size is checked against the limits from the
    first image on, so a zip of many large images is refused before its other headers."""
    first: tuple[str, tuple[int, int]] | None = None
    grey = True
    for entry in entries:
        where = f"{name}: {_short(entry.path)!r}"
        with _open_image(name, archive, entry) as img:
            try:
                mode, (w, h) = img.mode, _viewed_size(img)
            except _PIL_ERRORS as exc:
                raise DatasetError(400, f"{where} has unreadable metadata ({exc})") from exc
        if mode == "F":
            raise DatasetError(
                422, f"{where} has floating-point pixels; expected 8- or 16-bit images"
            )
        if not (1 <= w <= limits.max_side and 1 <= h <= limits.max_side):
            raise DatasetError(
                422,
                f"{where} is {w}x{h} (WxH); width and height must each be between 1 and "
                f"{limits.max_side}",
            )
        if first is None:
            first = (entry.path, (w, h))
            c = 1 if mode in _GREY_MODES else 3  # the others have the same size
            _check_shape(name, (len(entries), h, w, c), limits)
        elif (w, h) != first[1]:
            fw, fh = first[1]
            raise DatasetError(
                422,
                f"{where} is {w}x{h} (WxH) but {_short(first[0])!r} is {fw}x{fh}, as shown "
                "after EXIF orientation; all images must have the same size",
            )
        grey = grey and mode in _GREY_MODES
    assert first is not None  # _class_entries guarantees at least one entry
    w, h = first[1]
    return h, w, 1 if grey else 3


def _viewed_pixels(where: str, img: Image.Image, channels: int) -> np.ndarray:
    """uint8 (H, W, channels) as a viewer shows `img`: EXIF orientation applied, transparency
    composited over white, 16-bit grey scaled by 1/257 (the full range, not per image),
    palette, 1-bit, CMYK and the rest converted by Pillow."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):  # 16-bit grey ("I;16*"), or 32-bit ("I") holding 16-bit values
        raw = np.asarray(img)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi > 65535:
            raise DatasetError(
                422, f"{where} has pixel values {lo}..{hi}; expected 16-bit values 0..65535"
            )
        out = ((raw.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(value / 257)
        key = img.info.get("transparency")
        if isinstance(key, int):  # a PNG's transparent grey value
            out[raw == key] = 255
    elif img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
        out = np.asarray(flat.convert("L" if channels == 1 else "RGB"))
    else:
        out = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    if out.ndim == 2:
        out = out[..., np.newaxis]
    return np.repeat(out, 3, axis=2) if channels == 3 and out.shape[2] == 1 else out


def _decode_image(
    name: str, archive: zipfile.ZipFile, entry: _Entry, shape: tuple[int, int, int]
) -> np.ndarray:
    where = f"{name}: {_short(entry.path)!r}"
    with _open_image(name, archive, entry) as img:
        try:
            pixels = _viewed_pixels(where, img, shape[2])
        except _PIL_ERRORS as exc:
            raise DatasetError(400, f"{where} cannot be decoded ({exc})") from exc
    if pixels.shape != shape:
        (h, w), (ph, pw) = shape[:2], pixels.shape[:2]
        raise DatasetError(
            422,
            f"{where} is {pw}x{ph} (WxH) once decoded and oriented (its EXIF orientation comes "
            f"after its pixels) but the other images are {w}x{h}; all images must have the "
            "same size",
        )
    return pixels


def _parse_zip(name: str, data: bytes, limits: Limits, name_encoding: str | None) -> ParsedDataset:
    _check_upload_size(name, len(data), limits)
    _check_name_encoding(name_encoding)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_OPEN_ERRORS as exc:
        raise DatasetError(400, f"{name}: not a zip archive ({exc})") from exc
    with archive:
        infos = archive.infolist()
        named = [(_entry_name(name, info, name_encoding), info) for info in infos]
        for path, info in named:
            _check_entry(name, path, info)
        # Zip bombs: refuse on the declared sizes before decompressing anything. zipfile stops
        # reading an entry at its declared size, so a lying header cannot get past this.
        _check_decoded_size(
            name, "uncompressed size is", sum(info.file_size for info in infos), limits
        )
        entries = _class_entries(name, named)
        if len(entries) > limits.max_images:
            raise DatasetError(
                413, f"{name}: {len(entries)} images; the limit is {limits.max_images}"
            )
        classes = sorted({e.cls for e in entries})
        if len(classes) > limits.max_classes:
            raise DatasetError(
                422, f"{name}: {len(classes)} classes; at most {limits.max_classes} are allowed"
            )
        h, w, c = _image_layout(name, archive, entries, limits)
        _check_shape(name, (len(entries), h, w, c), limits)
        x = np.empty((len(entries), h, w, c), dtype=np.uint8)
        for i, entry in enumerate(entries):
            x[i] = _decode_image(name, archive, entry, (h, w, c))
    index = {cls: i for i, cls in enumerate(classes)}
    y = np.array([index[e.cls] for e in entries], dtype=np.int64)
    return ParsedDataset(x=x, y=y, classes=classes, format="zip")


def parse_zip(
    data: bytes, limits: Limits = DEFAULT_LIMITS, name_encoding: str | None = None
) -> ParsedDataset:
    """Parse a zip of <class_name>/<image> entries (optionally under one top-level folder).
    Images are stored as a viewer shows them (see _viewed_pixels); `name_encoding` is the code
    page of entry names stored without the UTF-8 flag."""
    return _parse_zip("zip", data, limits, name_encoding)


# --------------------------------------------------------------------------------------------
# Upload dispatch


def _list_names(names: list[str], most: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _idx_roles(names: list[str]) -> tuple[str, str | None] | None:
    """(images, labels) file names when `names` is an IDX upload, else None."""
    images = [n for n in names if "images" in n.lower() or "idx3" in n.lower()]
    labels = [n for n in names if "labels" in n.lower() or "idx1" in n.lower()]
    if len(images) != 1 or len(labels) > 1 or set(images) & set(labels):
        return None
    if set(images) | set(labels) != set(names):
        return None
    return images[0], labels[0] if labels else None


def parse_upload(
    files: dict[str, bytes], limits: Limits = DEFAULT_LIMITS, name_encoding: str | None = None
) -> ParsedDataset:
    """Parse an upload given as {file name: content}, choosing the format from the file names.
    `name_encoding` is the code page of zip entry names stored without the UTF-8 flag
    (default: UTF-8 where the name decodes as UTF-8, else cp437, as the zip standard says)."""
    names = list(files)
    _check_name_encoding(name_encoding)
    if not names:
        raise DatasetError(400, f"no files received; {_ACCEPTED}")
    total = sum(len(data) for data in files.values())
    if total > limits.max_upload_bytes:
        raise DatasetError(
            413,
            f"upload of {_list_names(names)} is {total} bytes; the limit is "
            f"{limits.max_upload_bytes} bytes",
        )
    if len(names) == 1:
        name = names[0]
        if name.lower().endswith(".npz"):
            return _parse_npz(name, files[name], limits)
        if name.lower().endswith(".zip"):
            return _parse_zip(name, files[name], limits, name_encoding)
    roles = _idx_roles(names)
    if roles is None:
        raise DatasetError(400, f"unrecognised upload: got {_list_names(names)}; {_ACCEPTED}")
    images_name, labels_name = roles
    labels = files[labels_name] if labels_name is not None else None
    return _parse_idx(images_name, files[images_name], labels_name or "labels", labels, limits)
