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
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

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
    422 semantically invalid e.g. labels out of range); str(exc) is a one-line human message
    naming the problem (e.g. "images.idx: bad magic number 0x00000802, expected 0x00000803")."""

    status: int

    def __init__(self, status: int, message: str) -> None:
        # File and entry names come from the user; escape control characters so the message
        # stays one line whatever they contain.
        one_line = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)
        super().__init__(one_line)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied while parsing; exceeding a size bound is a 413."""

    max_upload_bytes: int = 512 * 2**20  # compressed bytes received
    max_decoded_bytes: int = 2 * 2**30  # x.nbytes after decoding / zip uncompressed total
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
    nbytes = math.prod(shape)
    if nbytes > limits.max_decoded_bytes:
        raise DatasetError(
            413,
            f"{name}: decoded images take {nbytes} bytes; the limit is "
            f"{limits.max_decoded_bytes} bytes",
        )


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
_IDX_MAX_HEADER = 4 + 4 * 255
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _gunzip(name: str, data: bytes, limits: Limits) -> bytearray:
    """Decompress in chunks so a gzip bomb stops at the limit instead of filling memory."""
    limit = limits.max_decoded_bytes + _IDX_MAX_HEADER  # the limit is on pixels, not headers
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            while chunk := gz.read(_CHUNK):
                out += chunk
                if len(out) > limit:
                    raise DatasetError(
                        413,
                        f"{name}: decompresses to more than the limit of "
                        f"{limits.max_decoded_bytes} bytes",
                    )
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(400, f"{name}: corrupt gzip data ({exc})") from exc
    return out


def _read_idx(name: str, data: bytes, dims: int, limits: Limits) -> np.ndarray:
    """Decode one IDX file (raw or gzipped) of unsigned bytes with exactly `dims` dimensions."""
    buf: bytes | bytearray = _gunzip(name, data, limits) if data[:2] == _GZIP_MAGIC else data
    expected_magic = f"0x{(_IDX_UBYTE << 8) | dims:08x}"
    what = "IDX3 images" if dims == 3 else "IDX1 labels"
    if len(buf) < 4:
        raise DatasetError(400, f"{name}: too short for an IDX header; expected {what}")
    if buf[0] or buf[1]:
        magic = int.from_bytes(buf[:4], "big")
        raise DatasetError(
            400, f"{name}: bad magic number 0x{magic:08x}, expected {expected_magic} ({what})"
        )
    if buf[2] != _IDX_UBYTE:
        kind = _IDX_TYPES.get(buf[2], "unknown")
        raise DatasetError(
            400,
            f"{name}: unsupported IDX data type 0x{buf[2]:02x} ({kind}); only 0x08 "
            "(unsigned byte) is accepted",
        )
    if buf[3] != dims:
        magic = int.from_bytes(buf[:4], "big")
        raise DatasetError(
            400, f"{name}: bad magic number 0x{magic:08x}, expected {expected_magic} ({what})"
        )
    header = 4 + 4 * dims
    if len(buf) < header:
        raise DatasetError(400, f"{name}: IDX header truncated ({len(buf)} of {header} bytes)")
    shape = struct.unpack(f">{dims}I", buf[4:header])
    expected = header + math.prod(shape)
    if len(buf) != expected:
        problem = "truncated" if len(buf) < expected else "trailing bytes"
        raise DatasetError(
            400,
            f"{name}: {problem}: header says shape {shape}, i.e. {expected} bytes, "
            f"but the file has {len(buf)} bytes",
        )
    array = np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(shape)
    # A gunzipped bytearray gives a writable array already; raw bytes need a copy to match.
    return array if array.flags.writeable else array.copy()


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


def _check_npz_members(name: str, data: bytes, limits: Limits) -> None:
    """Bound the npz before np.load: it allocates whatever shape an .npy header claims."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DatasetError(
            400, f"{name}: not an .npz archive; expected a file written by np.savez(_compressed)"
        ) from exc
    with archive:
        infos = archive.infolist()
        total = sum(info.file_size for info in infos)
        if total > limits.max_decoded_bytes:
            raise DatasetError(
                413,
                f"{name}: uncompressed size is {total} bytes; the limit is "
                f"{limits.max_decoded_bytes} bytes",
            )
        for info in infos:
            if info.filename.removesuffix(".npy") in _NPZ_KEYS:
                _check_npy_header(name, archive, info, limits)


def _check_npy_header(
    name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits
) -> None:
    key = info.filename.removesuffix(".npy")
    try:
        with archive.open(info) as f:
            header = _read_npy_header(f)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(
            400, f"{name}: array {key!r} is not a valid .npy member ({exc})"
        ) from exc
    if header is None:
        raise DatasetError(400, f"{name}: array {key!r} uses an unsupported .npy version")
    shape, dtype = header
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > limits.max_decoded_bytes:
        raise DatasetError(
            413,
            f"{name}: array {key!r} of shape {shape} takes {nbytes} bytes; the limit is "
            f"{limits.max_decoded_bytes} bytes",
        )


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
    except (ValueError, OSError, EOFError) as exc:  # e.g. a zip with bytes before its start
        raise DatasetError(400, f"{name}: not a loadable .npz archive ({exc})") from exc
    arrays: dict[str, np.ndarray] = {}
    with npz:
        for key in _NPZ_KEYS:
            if key not in npz.files:
                continue
            try:
                value = npz[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
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
# Palette ("P") images count as colour even when their palette happens to be grey.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_entry(name: str, info: zipfile.ZipInfo) -> None:
    """Refuse entries that could escape an extraction directory, whatever we do with them."""
    entry = info.filename
    if "\\" in entry:
        raise DatasetError(
            400, f"{name}: entry {entry!r} contains a backslash; expected '/' separators"
        )
    if entry.startswith("/") or _DRIVE.match(entry):
        raise DatasetError(400, f"{name}: entry {entry!r} is an absolute path; expected relative")
    if ".." in entry.split("/"):
        raise DatasetError(400, f"{name}: entry {entry!r} contains '..'; expected no parent refs")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(400, f"{name}: entry {entry!r} is a symlink; expected regular files")


def _entry_parts(info: zipfile.ZipInfo) -> list[str] | None:
    """Path components of an image entry, or None for entries that are skipped silently."""
    parts = [p for p in info.filename.split("/") if p not in ("", ".")]
    if info.is_dir() or not parts or "__MACOSX" in parts:
        return None
    if any(p.startswith(".") for p in parts):  # .DS_Store, ._resource forks, hidden folders
        return None
    return parts


def _class_entries(name: str, archive: zipfile.ZipFile) -> list[tuple[str, zipfile.ZipInfo]]:
    """(class name, entry) pairs, with one common top-level folder stripped if present."""
    entries = [(parts, info) for info in archive.infolist() if (parts := _entry_parts(info))]
    if not entries:
        raise DatasetError(
            422, f"{name}: contains no images; expected <class_name>/<image file> entries"
        )
    depths = {len(parts) for parts, _ in entries}
    if depths == {3} and len({parts[0] for parts, _ in entries}) == 1:
        entries = [(parts[1:], info) for parts, info in entries]
    for parts, info in entries:
        if len(parts) != 2:
            raise DatasetError(
                400,
                f"{name}: entry {info.filename!r} is not <class_name>/<image file>; expected "
                "class folders, optionally all under one top-level folder",
            )
    entries.sort(key=lambda e: (e[0][0], e[1].filename))  # deterministic: class, then file
    return [(parts[0], info) for parts, info in entries]


def _open_image(name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Image.Image:
    where = f"{name}: {info.filename!r}"
    try:
        raw = archive.read(info)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, zlib.error) as exc:
        raise DatasetError(400, f"{where} cannot be read from the zip ({exc})") from exc
    Image.init()  # registers the format plugins; Image.OPEN is empty until something does
    formats = [f for f in _IMAGE_FORMATS if f in Image.OPEN]
    try:
        return Image.open(io.BytesIO(raw), formats=formats)
    except Image.DecompressionBombError as exc:
        raise DatasetError(422, f"{where} is too large an image ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            400, f"{where} is not a readable image; expected {', '.join(formats)}"
        ) from exc


def _image_layout(
    name: str, archive: zipfile.ZipFile, entries: list[tuple[str, zipfile.ZipInfo]], limits: Limits
) -> tuple[int, int, int]:
    """(H, W, C) shared by all images, read from headers only: no pixels are decoded here."""
    first: tuple[str, tuple[int, int]] | None = None
    grey = True
    for _, info in entries:
        with _open_image(name, archive, info) as img:
            size, mode = img.size, img.mode
        w, h = size
        if not (1 <= w <= limits.max_side and 1 <= h <= limits.max_side):
            raise DatasetError(
                422,
                f"{name}: {info.filename!r} is {w}x{h} (WxH); width and height must each be "
                f"between 1 and {limits.max_side}",
            )
        if first is None:
            first = (info.filename, size)
        elif size != first[1]:
            fw, fh = first[1]
            raise DatasetError(
                422,
                f"{name}: {info.filename!r} is {w}x{h} (WxH) but {first[0]!r} is {fw}x{fh}; "
                "all images must have the same size",
            )
        grey = grey and mode in _GREY_MODES
    assert first is not None  # _class_entries guarantees at least one entry
    w, h = first[1]
    return h, w, 1 if grey else 3


def _decode_image(
    name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, channels: int
) -> np.ndarray:
    with _open_image(name, archive, info) as img:
        try:
            pixels = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(400, f"{name}: {info.filename!r} cannot be decoded ({exc})") from exc
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def _parse_zip(name: str, data: bytes, limits: Limits) -> ParsedDataset:
    _check_upload_size(name, len(data), limits)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DatasetError(400, f"{name}: not a zip archive ({exc})") from exc
    with archive:
        infos = archive.infolist()
        for info in infos:
            _check_entry(name, info)
        # Zip bombs: refuse on the declared sizes before decompressing anything. zipfile stops
        # reading an entry at its declared size, so a lying header cannot get past this.
        total = sum(info.file_size for info in infos)
        if total > limits.max_decoded_bytes:
            raise DatasetError(
                413,
                f"{name}: uncompressed size is {total} bytes; the limit is "
                f"{limits.max_decoded_bytes} bytes",
            )
        entries = _class_entries(name, archive)
        if len(entries) > limits.max_images:
            raise DatasetError(
                413, f"{name}: {len(entries)} images; the limit is {limits.max_images}"
            )
        classes = sorted({cls for cls, _ in entries})
        if len(classes) > limits.max_classes:
            raise DatasetError(
                422, f"{name}: {len(classes)} classes; at most {limits.max_classes} are allowed"
            )
        h, w, c = _image_layout(name, archive, entries, limits)
        _check_shape(name, (len(entries), h, w, c), limits)
        x = np.empty((len(entries), h, w, c), dtype=np.uint8)
        for i, (_, info) in enumerate(entries):
            x[i] = _decode_image(name, archive, info, c)
    index = {cls: i for i, cls in enumerate(classes)}
    y = np.array([index[cls] for cls, _ in entries], dtype=np.int64)
    return ParsedDataset(x=x, y=y, classes=classes, format="zip")


def parse_zip(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ParsedDataset:
    """Parse a zip of <class_name>/<image> entries (optionally under one top-level folder)."""
    return _parse_zip("zip", data, limits)


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


def parse_upload(files: dict[str, bytes], limits: Limits = DEFAULT_LIMITS) -> ParsedDataset:
    """Parse an upload given as {file name: content}, choosing the format from the file names."""
    names = list(files)
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
            return _parse_zip(name, files[name], limits)
    roles = _idx_roles(names)
    if roles is None:
        raise DatasetError(400, f"unrecognised upload: got {_list_names(names)}; {_ACCEPTED}")
    images_name, labels_name = roles
    labels = files[labels_name] if labels_name is not None else None
    return _parse_idx(images_name, files[images_name], labels_name or "labels", labels, limits)
