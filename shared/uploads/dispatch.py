"""parse_upload: choose the format of an upload from its file names and parse it.

Owns the checks made before any format is chosen (a known name_encoding, at least one file,
the total size) and the rule that picks the format: one .npz, one .zip, or IDX images with
optional labels.
"""

from __future__ import annotations

from shared.uploads.core import DEFAULT_LIMITS, DatasetError, Limits, ParsedDataset
from shared.uploads.idx import _parse_idx
from shared.uploads.images import _check_name_encoding, _parse_zip
from shared.uploads.npz import _parse_npz

__all__ = ["parse_upload"]

_ACCEPTED = (
    "expected one .npz file, one .zip file of <class_name>/<image> entries, or an IDX images file "
    "(name containing 'images' or 'idx3') with an optional labels file (name containing 'labels' "
    "or 'idx1'), raw or gzipped"
)


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
