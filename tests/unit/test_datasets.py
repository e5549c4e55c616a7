"""shared.datasets: uploads round-trip exactly, and every kind of bad upload is refused clearly."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pytest
from PIL import Image

from shared.datasets import (
    DatasetError,
    Limits,
    ParsedDataset,
    from_npz_bytes,
    parse_idx,
    parse_npz,
    parse_upload,
    parse_zip,
    to_npz_bytes,
    write_idx,
)

RNG = np.random.default_rng(0)


def images(n: int, h: int, w: int, c: int | None = None) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def labels(n: int, k: int) -> np.ndarray:
    return RNG.integers(0, k, size=n).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # S_IFLNK | 0777
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def idx_header(type_byte: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_byte, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


# --------------------------------------------------------------------------------------------
# Round trips


@dataclass
class RoundTrip:
    id: str
    files: dict[str, bytes]
    x: np.ndarray  # expected (N, H, W, C)
    y: np.ndarray | None
    classes: list[str]
    format: str
    atol: int = 0  # JPEG is lossy


def _idx_case(gz: bool, with_labels: bool) -> RoundTrip:
    x, y = images(5, 7, 6), labels(5, 10)
    y[0] = 9  # so the derived class list is "0".."9"
    pack = gzip.compress if gz else bytes
    files = {"train-images-idx3-ubyte" + (".gz" if gz else ""): pack(write_idx(x))}
    if with_labels:
        files["train-labels-idx1-ubyte" + (".gz" if gz else "")] = pack(write_idx(y))
    classes = [str(i) for i in range(10)] if with_labels else []
    return RoundTrip(
        f"idx-{'gzip' if gz else 'raw'}{'' if with_labels else '-no-labels'}",
        files,
        x[..., None],
        y.astype(np.int64) if with_labels else None,
        classes,
        "idx",
    )


def _npz_cases() -> list[RoundTrip]:
    grey, rgb, y = images(4, 5, 6), images(4, 5, 6, 3), np.array([0, 2, 1, 2])
    names = np.array(["cat", "dog", "emu", "fox"])
    return [
        RoundTrip("npz-grey-unlabelled", {"d.npz": npz(x=grey)}, grey[..., None], None, [], "npz"),
        RoundTrip(
            "npz-grey-y", {"d.npz": npz(x=grey, y=y)}, grey[..., None], y, ["0", "1", "2"], "npz"
        ),
        RoundTrip(
            "npz-rgb-y-classes",
            {"d.NPZ": npz(x=rgb, y=y, classes=names)},
            rgb,
            y,
            names.tolist(),
            "npz",
        ),
        RoundTrip("npz-rgb-unlabelled", {"d.npz": npz(x=rgb)}, rgb, None, [], "npz"),
        RoundTrip(
            "npz-int64-pixels",
            {"d.npz": npz(x=grey.astype(np.int64), y=y)},
            grey[..., None],
            y,
            ["0", "1", "2"],
            "npz",
        ),
    ]


def _zip_grey_case() -> RoundTrip:
    cats, dogs = images(2, 8, 9), images(3, 8, 9)
    entries = {f"dog/{i}.png": encode(im) for i, im in enumerate(dogs)}
    entries |= {f"cat/{i}.png": encode(im) for i, im in enumerate(cats)}
    x = np.concatenate([cats, dogs])[..., None]  # classes sort: cat first
    return RoundTrip(
        "zip-grey-png",
        {"set.zip": make_zip(entries)},
        x,
        np.array([0, 0, 1, 1, 1]),
        ["cat", "dog"],
        "zip",
    )


def _zip_mixed_case() -> RoundTrip:
    # Flat colours survive JPEG almost exactly, so pixels can still be compared.
    red = np.full((16, 16, 3), (200, 30, 40), dtype=np.uint8)
    rgb = images(1, 16, 16, 3)[0]
    grey = images(1, 16, 16)[0]
    entries = {
        "data/apple/a.jpg": encode(red, "JPEG"),
        "data/apple/b.png": encode(rgb),
        "data/pear/c.png": encode(grey),  # greyscale mixed with colour -> all RGB
        "data/": b"",
        "data/.DS_Store": b"junk",
        "__MACOSX/data/apple/._a.jpg": b"junk",
    }
    x = np.stack([red, rgb, np.repeat(grey[..., None], 3, axis=-1)])
    return RoundTrip(
        "zip-top-folder-rgb-jpeg-png-grey",
        {"set.zip": make_zip(entries)},
        x,
        np.array([0, 0, 1]),
        ["apple", "pear"],
        "zip",
        atol=3,
    )


ROUND_TRIPS = [
    _idx_case(gz=False, with_labels=True),
    _idx_case(gz=True, with_labels=True),
    _idx_case(gz=False, with_labels=False),
    _idx_case(gz=True, with_labels=False),
    *_npz_cases(),
    _zip_grey_case(),
    _zip_mixed_case(),
]


def assert_same(
    ds: ParsedDataset, x: np.ndarray, y: np.ndarray | None, classes: list[str], atol: int = 0
) -> None:
    assert ds.x.dtype == np.uint8 and ds.x.shape == x.shape
    assert np.abs(ds.x.astype(int) - x.astype(int)).max() <= atol
    if y is None:
        assert ds.y is None
    else:
        assert ds.y is not None and ds.y.dtype == np.int64
        np.testing.assert_array_equal(ds.y, y)
    assert ds.classes == classes


@pytest.mark.parametrize("case", ROUND_TRIPS, ids=lambda c: c.id)
def test_upload_round_trip(case: RoundTrip) -> None:
    ds = parse_upload(case.files)
    assert ds.format == case.format
    assert_same(ds, case.x, case.y, case.classes, case.atol)

    stored = from_npz_bytes(to_npz_bytes(ds))
    assert stored.format == "npz"
    assert_same(stored, ds.x, ds.y, ds.classes)


def test_direct_parsers_match_dispatch() -> None:
    x, y = images(3, 4, 4), np.array([1, 0, 1], dtype=np.uint8)
    assert_same(parse_idx(write_idx(x), write_idx(y)), x[..., None], y, ["0", "1"])
    assert_same(parse_npz(npz(x=x)), x[..., None], None, [])
    zipped = make_zip({"a/1.png": encode(x[0]), "b/2.png": encode(x[1])})
    assert_same(parse_zip(zipped), x[:2, ..., None], np.array([0, 1]), ["a", "b"])


@pytest.mark.parametrize("shape", [(0,), (5,), (1, 1, 1), (4, 3, 2)])
def test_write_idx_round_trip(shape: tuple[int, ...]) -> None:
    array = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    encoded = write_idx(array)
    assert encoded[:4] == bytes([0, 0, 8, len(shape)])
    if len(shape) == 3:
        np.testing.assert_array_equal(parse_idx(encoded, None).x[..., 0], array)
    elif shape[0] > 0:
        ds = parse_idx(write_idx(images(shape[0], 2, 2)), encoded)
        assert ds.y is not None
        np.testing.assert_array_equal(ds.y, array)


def test_write_idx_rejects_other_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_idx(np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_idx(np.zeros((2, 3, 3), dtype=np.float32))


def test_parsed_images_are_writable() -> None:
    ds = parse_idx(write_idx(images(2, 3, 3)), None)
    ds.x[0, 0, 0, 0] = 1  # a read-only view over the upload bytes would raise here


# --------------------------------------------------------------------------------------------
# Rejections


@dataclass
class Reject:
    id: str
    call: Callable[[], object]
    status: int
    match: list[str] = field(default_factory=list)  # substrings the message must contain


def gzip_bomb() -> bytes:
    return gzip.compress(bytes(50_000_000), compresslevel=1)


X = images(4, 5, 5)
IMAGES, LABELS = write_idx(X), write_idx(labels(4, 3))
PNG_8, PNG_9 = encode(images(1, 8, 8)[0]), encode(images(1, 9, 8)[0])
SMALL = Limits(
    max_upload_bytes=10_000, max_decoded_bytes=1_000_000, max_images=10, max_side=8, max_classes=3
)


def lying_npz() -> bytes:
    """An npz whose x.npy header claims 10**12 bytes but holds almost nothing."""
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000, 1000, 1000), }"
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"  # .npy pads to 64 bytes
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 10
    return make_zip({"x.npy": npy})


REJECTS = [
    # IDX
    Reject("idx-bad-magic", partial(parse_idx, LABELS, None), 400,
           ["images: bad magic number 0x00000801, expected 0x00000803"]),
    Reject("idx-not-idx", partial(parse_idx, PNG_8, None), 400, ["bad magic number 0x89504e47"]),
    Reject("idx-labels-as-images-magic", partial(parse_idx, IMAGES, IMAGES), 400,
           ["labels: bad magic number 0x00000803, expected 0x00000801"]),
    Reject("idx-type-byte", partial(parse_idx, idx_header(0x0D, (1, 2, 2)) + bytes(16), None),
           400, ["data type 0x0d (float)", "only 0x08"]),
    Reject("idx-truncated", partial(parse_idx, IMAGES[:-1], None), 400,
           ["truncated", "(4, 5, 5)", "116 bytes", "115 bytes"]),
    Reject("idx-trailing", partial(parse_idx, IMAGES + b"\0", None), 400,
           ["trailing bytes", "116 bytes", "117 bytes"]),
    Reject("idx-header-truncated", partial(parse_idx, IMAGES[:9], None), 400, ["header"]),
    Reject("idx-count-mismatch", partial(parse_idx, IMAGES, write_idx(labels(3, 3))), 422,
           ["3 labels but 4 images"]),
    Reject("idx-zero-images", partial(parse_idx, idx_header(8, (0, 5, 5)), None), 422,
           ["no images"]),
    Reject("idx-side-too-big", partial(parse_idx, write_idx(images(1, 9, 4)), None, SMALL), 422,
           ["9x4", "between 1 and 8"]),
    Reject("idx-too-many-images", partial(parse_idx, write_idx(images(11, 2, 2)), None, SMALL),
           413, ["11 images", "limit is 10"]),
    Reject("idx-too-many-classes", partial(parse_idx, IMAGES, write_idx(np.array([0, 1, 2, 3],
           dtype=np.uint8)), SMALL), 422, ["4 classes", "at most 3"]),
    Reject("gzip-bomb", lambda: parse_upload({"images.gz": gzip_bomb()},
           Limits(max_decoded_bytes=1_000_000)), 413, ["images.gz", "1000000 bytes"]),
    Reject("gzip-corrupt", partial(parse_idx, gzip.compress(IMAGES)[:-8], None), 400,
           ["corrupt gzip"]),
    # npz
    Reject("npz-missing-x", partial(parse_npz, npz(images=X)), 400, ["missing array 'x'"]),
    Reject("npz-float-x", partial(parse_npz, npz(x=X.astype(np.float32))), 422,
           ["float32", "uint8"]),
    Reject("npz-int-x-out-of-range", partial(parse_npz, npz(x=np.full((2, 3, 3), 300,
           dtype=np.int16))), 422, ["int16", "values 300..300", "0..255"]),
    Reject("npz-x-bad-shape", partial(parse_npz, npz(x=images(2, 3, 3, 2))), 422,
           ["(2, 3, 3, 2)", "C = 1 or 3"]),
    Reject("npz-length-mismatch", partial(parse_npz, npz(x=X, y=np.arange(5))), 422,
           ["5 labels but 4 images"]),
    Reject("npz-label-out-of-range", partial(parse_npz, npz(x=images(4, 2, 2),
           y=np.array([1, 12, 0, 3]), classes=np.array([str(i) for i in range(10)]))), 422,
           ["label 12 out of range for 10 classes"]),
    Reject("npz-negative-label", partial(parse_npz, npz(x=X, y=np.array([0, -1, 2, 1]))), 422,
           ["label -1 at index 1 is negative"]),
    Reject("npz-float-labels", partial(parse_npz, npz(x=X, y=np.zeros(4))), 422,
           ["float64", "integers"]),
    Reject("npz-duplicate-classes", partial(parse_npz, npz(x=X, y=np.zeros(4, dtype=int),
           classes=np.array(["a", "a"]))), 422, ["duplicate class name 'a'"]),
    Reject("npz-object-classes", partial(parse_npz, npz(x=X, y=np.zeros(4, dtype=int),
           classes=np.array(["a", None]))), 400, ["'classes'"]),
    Reject("npz-classes-without-y", partial(parse_npz, npz(x=X, classes=np.array(["a"]))), 422,
           ["without 'y'"]),
    Reject("npz-not-a-zip", partial(parse_npz, b"hello"), 400, ["not an .npz"]),
    Reject("npz-lying-header", lambda: parse_npz(lying_npz()), 413, ["(1000000, 1000, 1000)"]),
    Reject("npz-too-big-decoded", partial(parse_npz, npz(x=images(10, 8, 8, 3)),
           Limits(max_decoded_bytes=1000)), 413, ["limit is 1000 bytes"]),
    # zip
    Reject("zip-dotdot", partial(parse_zip, make_zip({"a/1.png": PNG_8, "../evil.png": PNG_8})),
           400, ["'../evil.png'", "'..'"]),
    Reject("zip-absolute", partial(parse_zip, make_zip({"/etc/x.png": PNG_8})), 400,
           ["'/etc/x.png'", "absolute"]),
    Reject("zip-backslash", partial(parse_zip, make_zip({"a\\1.png": PNG_8})), 400,
           ["backslash"]),
    Reject("zip-symlink", partial(parse_zip, make_zip({"a/1.png": PNG_8}, symlinks=("a/2.png",))),
           400, ["'a/2.png'", "symlink"]),
    Reject("zip-too-big-uncompressed", partial(parse_zip, make_zip({"a/1.png": PNG_8,
           "a/pad.bin": bytes(2_000_000)}), SMALL), 413, ["uncompressed size", "1000000"]),
    Reject("zip-side-too-big", partial(parse_zip, make_zip({"a/1.png": PNG_9}), SMALL), 422,
           ["'a/1.png'", "8x9", "between 1 and 8"]),
    Reject("zip-size-mismatch", partial(parse_zip, make_zip({"a/1.png": PNG_8, "b/2.png": PNG_9})),
           422, ["'b/2.png' is 8x9", "'a/1.png' is 8x8", "same size"]),
    Reject("zip-not-an-image", partial(parse_zip, make_zip({"a/1.png": PNG_8,
           "a/notes.txt": b"hello"})), 400, ["'a/notes.txt'", "not a readable image"]),
    Reject("zip-no-images", partial(parse_zip, make_zip({"a/": b"", ".DS_Store": b""})), 422,
           ["no images"]),
    Reject("zip-flat", partial(parse_zip, make_zip({"1.png": PNG_8})), 400,
           ["'1.png'", "<class_name>/<image file>"]),
    Reject("zip-too-many-classes", partial(parse_zip, make_zip({f"{c}/1.png": PNG_8
           for c in "abcd"}), SMALL), 422, ["4 classes", "at most 3"]),
    Reject("zip-not-a-zip", partial(parse_zip, b"PK nope"), 400, ["not a zip"]),
    # whole upload
    Reject("oversize-upload", partial(parse_upload, {"d.npz": bytes(10_001)}, SMALL), 413,
           ["10001 bytes", "limit is 10000"]),
    Reject("oversize-direct", partial(parse_npz, bytes(10_001), SMALL), 413, ["10001 bytes"]),
    Reject("empty-file", partial(parse_upload, {"d.zip": b""}), 400, ["d.zip", "empty"]),
    Reject("empty-upload", partial(parse_upload, {}), 400, ["no files received"]),
    Reject("unknown-files", partial(parse_upload, {"a.csv": b"1", "b.txt": b"2"}), 400,
           ["'a.csv', 'b.txt'", "expected one .npz file"]),
    Reject("two-image-files", partial(parse_upload, {"images1": IMAGES, "images2": IMAGES}), 400,
           ["'images1', 'images2'"]),
    Reject("idx-with-extra-file", partial(parse_upload, {"train-images": IMAGES, "x.txt": b"1"}),
           400, ["'x.txt'"]),
]  # fmt: skip


@pytest.mark.parametrize("case", REJECTS, ids=lambda c: c.id)
def test_rejects(case: Reject) -> None:
    with pytest.raises(DatasetError) as caught:
        case.call()
    message = str(caught.value)
    assert caught.value.status == case.status, message
    for part in case.match:
        assert part in message
    assert "\n" not in message


def test_idx_errors_name_the_uploaded_file() -> None:
    files = {"train-images-idx3-ubyte.gz": gzip.compress(IMAGES), "train-labels.gz": IMAGES}
    with pytest.raises(DatasetError, match=r"^train-labels\.gz: bad magic number 0x00000803"):
        parse_upload(files)


def test_messages_stay_on_one_line() -> None:
    with pytest.raises(DatasetError) as caught:
        parse_upload({"evil\nname.txt": b"1"})
    assert "\n" not in str(caught.value) and "evil\\nname.txt" in str(caught.value)


def test_module_never_imports_torch() -> None:
    code = (
        "import sys, shared.datasets\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
