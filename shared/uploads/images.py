"""Zip uploads of images: one .zip of <class_name>/<image> entries, optionally all under one
top-level folder; the folder names are the classes.

Owns parse_zip and the reading of entry names (name_encoding). Entries that could escape an
extraction folder are refused, declared sizes are checked before anything is decompressed,
image sizes are read from headers before any pixel is decoded, and images are stored as a
viewer shows them (EXIF orientation, transparency over white, 16-bit grey scaled).
"""

from __future__ import annotations

import io
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from shared.uploads.core import (
    _ZIP_OPEN_ERRORS,
    _ZIP_READ_ERRORS,
    DEFAULT_LIMITS,
    DatasetError,
    Limits,
    ParsedDataset,
    _check_class_name,
    _check_decoded_size,
    _check_shape,
    _check_upload_size,
    _short,
)

__all__ = ["parse_zip", "read_image"]

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
_DRIVE = re.compile(r"^[A-Za-z]:")
# What Pillow raises on a damaged file, beyond the documented OSError.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error,
               EOFError, zlib.error)  # fmt: skip


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


def read_image(
    name: str, data: bytes, channels: int, limits: Limits = DEFAULT_LIMITS
) -> np.ndarray:
    """One PNG or JPEG (a predict request's image) as uint8 (H, W, channels), normalised as a
    zip upload's images are (_viewed_pixels: EXIF orientation, transparency over white,
    16-bit grey scaled). Its size is read from the header and checked against `limits`
    before any pixel is decoded, at 4 bytes a pixel (what Pillow may hold while decoding:
    RGBA, CMYK). DatasetError names `name`: 400 unreadable, 413 past a size limit (Pillow's
    decompression-bomb bound included), 422 a side over `limits.max_side` or not 8/16-bit."""
    _check_upload_size(name, len(data), limits)
    Image.init()
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except Image.DecompressionBombError as exc:
        raise DatasetError(413, f"{name} is too large an image ({exc})") from exc
    except (UnidentifiedImageError, *_PIL_ERRORS) as exc:
        raise DatasetError(400, f"{name} is not a readable image; expected PNG or JPEG") from exc
    with img:
        try:
            mode, (w, h) = img.mode, _viewed_size(img)
        except _PIL_ERRORS as exc:
            raise DatasetError(400, f"{name} has unreadable metadata ({exc})") from exc
        if mode == "F":
            raise DatasetError(422, f"{name} has floating-point pixels; expected 8- or 16-bit")
        _check_shape(name, (1, h, w, max(channels, 4)), limits)
        try:
            pixels = _viewed_pixels(name, img, channels)
        except _PIL_ERRORS as exc:
            raise DatasetError(400, f"{name} cannot be decoded ({exc})") from exc
    return pixels
