"""shared.uploads: uploads round-trip exactly, and every kind of bad upload is refused clearly."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pytest
from PIL import Image

from shared.uploads import (
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


def idx_gzip_bomb(shape: tuple[int, int, int], zeros: int = 20_000_000) -> bytes:
    """A gzipped IDX images file: a real header for `shape`, then `zeros` zero bytes."""
    return gzip.compress(idx_header(8, shape) + bytes(zeros), compresslevel=9)


X = images(4, 5, 5)
IMAGES, LABELS = write_idx(X), write_idx(labels(4, 3))
PNG_8, PNG_9 = encode(images(1, 8, 8)[0]), encode(images(1, 9, 8)[0])
SMALL = Limits(
    max_upload_bytes=10_000, max_decoded_bytes=1_000_000, max_images=10, max_side=8, max_classes=3
)


def odd_zip(**fields: int) -> bytes:
    """A zip of one image whose ZipInfo fields are set as given (e.g. extract_version)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("a/1.png")
        for key, value in fields.items():
            setattr(info, key, value)
        zf.writestr(info, PNG_8)
    return buf.getvalue()


def encrypted(archive: bytes) -> bytes:
    """The one-entry zip with its "encrypted" flag set (the data stay as they are)."""
    central = archive.index(b"PK\x01\x02")
    flags = bytearray(archive)
    flags[6] |= 1  # local header: general purpose flags
    flags[central + 8] |= 1  # central directory entry: the same
    return bytes(flags)


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
    Reject("gzip-idx-bomb", lambda: parse_upload({"images.gz": idx_gzip_bomb((3000, 1024,
           1024))}, Limits(max_decoded_bytes=1_000_000)), 413, ["images.gz",
           "decoded images take 3145728000 bytes", "1000000 bytes"]),
    Reject("gzip-idx-trailing-bomb", lambda: parse_upload({"images.gz": idx_gzip_bomb((1, 2,
           2))}), 400, ["images.gz", "trailing bytes", "(1, 2, 2)", "decompresses to more than"]),
    Reject("gzip-zeros-bomb", lambda: parse_upload({"images.gz": gzip_bomb()}), 400,
           ["images.gz", "data type 0x00"]),
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
    Reject("zip-newer-version", partial(parse_zip, odd_zip(extract_version=99)), 400,
           ["not a zip", "version"]),
    Reject("npz-encrypted-member", partial(parse_npz, encrypted(npz(x=X))), 400,
           ["'x'", "encrypted"]),
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
        "import sys, shared.uploads\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# Images are stored as a viewer shows them (issue 14, item 3)


def png(image: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **params)
    return buf.getvalue()


def jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    """A near-lossless JPEG (quality 100, no chroma subsampling) with an EXIF Orientation."""
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    return buf.getvalue()


INK = np.zeros((6, 5), dtype=bool)
INK[1:5, 2] = True  # a vertical stroke
INK[1, 1:4] = True


def test_alpha_is_composited_over_white() -> None:
    # Black ink on a fully transparent (black) background, as drawing tools save it, plus a
    # half-transparent red dot; and the same in grey + alpha.
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[INK] = (0, 0, 0, 255)
    rgba[5, 4] = (255, 0, 0, 128)
    la = np.zeros((6, 5, 2), dtype=np.uint8)
    la[INK] = (40, 255)
    colour = parse_zip(make_zip({"a/1.png": png(Image.fromarray(rgba, "RGBA"))}))
    grey = parse_zip(make_zip({"a/1.png": png(Image.fromarray(la, "LA"))}))

    expected = np.full((6, 5, 3), 255, dtype=np.uint8)
    expected[INK] = 0
    expected[5, 4] = (255, 127, 127)  # 255 * 128/255 + 255 * 127/255; 0 + 255 * 127/255
    np.testing.assert_array_equal(colour.x[0], expected)
    expected_grey = np.where(INK, 40, 255).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(grey.x[0], expected_grey)


def test_16_bit_grey_is_scaled_over_the_full_range() -> None:
    ink = np.where(INK, 50000, 2000).astype(np.uint16)
    ink[0, 0], ink[0, 4] = 0, 65535
    other = np.full((6, 5), 30000, dtype=np.uint16)
    entries = {"ink/1.png": png(Image.fromarray(ink)), "flat/1.png": png(Image.fromarray(other))}
    ds = parse_zip(make_zip(entries))
    assert Image.open(io.BytesIO(png(Image.fromarray(ink)))).mode == "I;16"
    expected = np.where(INK, 195, 8).astype(np.uint8)  # round(v / 257), not stretched
    expected[0, 0], expected[0, 4] = 0, 255
    assert ds.classes == ["flat", "ink"]
    np.testing.assert_array_equal(ds.x[1, ..., 0], expected)
    np.testing.assert_array_equal(ds.x[0, ..., 0], np.full((6, 5), 117))  # 30000 / 257


def test_exif_orientation_is_applied_before_sizes_are_compared() -> None:
    # Viewers show every image below as 30 wide by 20 high.
    shown = np.zeros((20, 30, 3), dtype=np.uint8)
    shown[:10, :15] = (200, 30, 40)
    shown[10:, 15:] = 255
    upside_down = jpeg(np.rot90(shown, 2), orientation=3)  # stored rotated by 180
    portrait = jpeg(np.rot90(shown, 1), orientation=6)  # a phone's 20x30, turned 90 CW to view
    plain = jpeg(shown, orientation=1)
    ds = parse_zip(make_zip({"a/1.jpg": upside_down, "b/2.jpg": portrait, "c/3.jpg": plain}))
    assert ds.x.shape == (3, 20, 30, 3)
    for stored in ds.x:
        assert np.abs(stored.astype(int) - shown.astype(int)).max() <= 3


def test_palette_1_bit_and_cmyk_are_stored_as_shown() -> None:
    # Palette with a transparent index, 1-bit, CMYK and grey + alpha in one set -> RGB.
    index = np.where(INK, 1, 0).astype(np.uint8)
    palette = Image.fromarray(index, "P")
    palette.putpalette([0, 0, 0, 10, 120, 250] + [0] * 762)
    palette.info["transparency"] = 0
    one_bit = Image.fromarray(INK).convert("1")
    cmyk = np.zeros((6, 5, 4), dtype=np.uint8)
    cmyk[INK] = (255, 0, 0, 0)  # cyan ink on white
    tiff = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(tiff, format="TIFF")
    la = np.zeros((6, 5, 2), dtype=np.uint8)
    la[INK] = (0, 255)
    ds = parse_zip(
        make_zip(
            {
                "a/palette.png": png(palette, transparency=0),
                "b/one-bit.png": png(one_bit),
                "c/cmyk.tif": tiff.getvalue(),
                "d/grey-alpha.png": png(Image.fromarray(la, "LA")),
            }
        )
    )
    white = np.full((6, 5, 3), 255, dtype=np.uint8)
    expected = [white.copy() for _ in range(4)]
    expected[0][INK] = (10, 120, 250)
    expected[1][INK] = 255  # 1-bit: the stroke is white on black
    expected[1][~INK] = 0
    expected[2][INK] = (0, 255, 255)
    expected[3][INK] = 0
    np.testing.assert_array_equal(ds.x, np.stack(expected))


def raw_name_zip(entries: dict[bytes, bytes], utf8_flag: bool = False) -> bytes:
    """A zip whose entry names are these exact bytes, without the UTF-8 flag unless asked:
    written under ASCII stand-ins of the same length, then patched in place."""
    stand_ins = {chr(ord("A") + i).encode() * len(raw): raw for i, raw in enumerate(entries)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for stand_in, data in zip(stand_ins, entries.values(), strict=True):
            info = zipfile.ZipInfo(stand_in.decode())
            info.flag_bits |= 0x800 if utf8_flag else 0
            zf.writestr(info, data)
    out = buf.getvalue()
    for stand_in, raw in stand_ins.items():
        assert out.count(stand_in) == 2  # local header and central directory
        out = out.replace(stand_in, raw)
    return out


def test_zip_names_without_the_utf8_flag() -> None:
    cat, dog = "кошка/1.png".encode("cp866"), "собака/1.png".encode("cp866")
    zipped = raw_name_zip({cat: PNG_8, dog: PNG_8})
    named = parse_upload({"old.zip": zipped}, name_encoding="cp866")
    assert named.classes == ["кошка", "собака"]
    # Without name_encoding: cp437, as the zip standard says (other letters, no controls).
    as_cp437 = sorted(c.encode("cp866").decode("cp437") for c in ("кошка", "собака"))
    assert parse_upload({"old.zip": zipped}).classes == as_cp437
    # UTF-8 written without the flag (macOS Archive Utility) and decomposed (NFD) names.
    mac = raw_name_zip({"café/1.png".encode(): PNG_8, "cafe\u0301s/1.png".encode(): PNG_8})
    assert parse_upload({"mac.zip": mac}).classes == ["café", "cafés"]


@pytest.mark.parametrize("encoding", ["nope", "rot13", "base64"])
def test_unknown_name_encoding_is_refused(encoding: str) -> None:
    with pytest.raises(DatasetError) as caught:
        parse_upload({"d.zip": make_zip({"a/1.png": PNG_8})}, name_encoding=encoding)
    assert caught.value.status == 422 and caught.value.field == "name_encoding"
    assert repr(encoding) in str(caught.value)


def test_names_that_do_not_decode_are_refused() -> None:
    zipped = raw_name_zip({b"\xff\xfe/1.png": PNG_8})
    with pytest.raises(DatasetError) as caught:
        parse_upload({"d.zip": zipped}, name_encoding="utf-8")
    assert caught.value.status == 422 and caught.value.field == "name_encoding"


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"d.zip": make_zip({"a\x01b/1.png": PNG_8})}, ["'a\\x01b/1.png'", "control character"]),
        ({"d.zip": raw_name_zip({b"a\x1bb/1.png": PNG_8})}, ["control character", "\\x1b"]),
        ({"d.zip": make_zip({"x" * 65 + "/1.png": PNG_8})}, ["65 characters", "at most 64"]),
        (
            {"d.npz": npz(x=X, y=np.zeros(4, dtype=int), classes=np.array(["a" * 100_000]))},
            ["100000 characters", "at most 64"],
        ),
        (
            {"d.npz": npz(x=X, y=np.zeros(4, dtype=int), classes=np.array(["a\nb"]))},
            ["control character"],
        ),
        # Invisible: a zero-width space makes "cat" and "ca\u200bt" two classes that look
        # the same; a right-to-left override makes a name read backwards.
        ({"d.zip": make_zip({"ca\u200bt/1.png": PNG_8})}, ["invisible", "U+200B"]),
        ({"d.zip": make_zip({"\u202ecat/1.png": PNG_8})}, ["invisible", "U+202E"]),
        ({"d.zip": make_zip({" /1.png": PNG_8})}, ["blank"]),
    ],
    ids=[
        "zip-control",
        "zip-escape-no-flag",
        "zip-long",
        "npz-100kb",
        "npz-newline",
        "zip-zero-width",
        "zip-bidi",
        "zip-blank",
    ],
)
def test_class_names_are_short_and_printable(files: dict[str, bytes], says: list[str]) -> None:
    with pytest.raises(DatasetError) as caught:
        parse_upload(files)
    assert caught.value.status == 422
    message = str(caught.value)
    assert len(message) < 400 and "\n" not in message
    for part in says:
        assert part in message


def test_entries_with_empty_names_are_skipped() -> None:
    # zipfile cuts names at a NUL byte: an entry named b"\0" reads back as "".
    zipped = make_zip({"Q": b"", "a/1.png": PNG_8})
    central = zipped.index(b"PK\x01\x02")
    assert zipped[30:31] == zipped[central + 46 : central + 47] == b"Q"
    zipped = zipped[:30] + b"\0" + zipped[31 : central + 46] + b"\0" + zipped[central + 47 :]
    ds = parse_zip(zipped)
    assert ds.classes == ["a"] and len(ds.x) == 1


def test_float_images_are_refused_with_a_reason() -> None:
    grey = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F")
    tiff = io.BytesIO()
    grey.save(tiff, format="TIFF")
    with pytest.raises(DatasetError, match="floating-point") as caught:
        parse_zip(make_zip({"a/1.tif": tiff.getvalue()}))
    assert caught.value.status == 422


# --------------------------------------------------------------------------------------------
# Bombs are refused within a small, fixed amount of memory (issue 14, item 2)


def peak_memory(call: Callable[[], object]) -> tuple[int, BaseException | None]:
    """(peak bytes allocated by Python and numpy during call(), what it raised)."""
    tracemalloc.start()
    try:
        call()
        raised = None
    except Exception as exc:
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, raised


def test_gzip_idx_bomb_is_refused_on_its_header() -> None:
    bomb = idx_gzip_bomb((200, 1000, 1000), zeros=200_000_000)  # 200 KB -> 200 MB
    peak, raised = peak_memory(
        partial(parse_upload, {"images.gz": bomb}, Limits(max_decoded_bytes=100_000_000))
    )
    assert isinstance(raised, DatasetError) and raised.status == 413
    assert "200000000 bytes" in str(raised)
    assert peak < 2_000_000


def test_gzip_stops_at_the_declared_size() -> None:
    bomb = idx_gzip_bomb((10, 100, 100), zeros=200_000_000)  # 100 KB of pixels, then 200 MB
    peak, raised = peak_memory(partial(parse_upload, {"images.gz": bomb}))
    assert isinstance(raised, DatasetError) and raised.status == 400
    assert "trailing bytes" in str(raised)
    assert peak < 5_000_000


def test_zip_of_large_images_is_refused_before_decoding() -> None:
    # 600 RGB PNGs of 1024x1024 (the 1.9 MB zip): 1.9 GB of pixels.
    one = png(Image.new("RGB", (1024, 1024), (10, 20, 30)))
    zipped = make_zip({f"c{i % 3}/{i}.png": one for i in range(600)})
    peak, raised = peak_memory(partial(parse_upload, {"big.zip": zipped}))
    assert isinstance(raised, DatasetError) and raised.status == 413
    assert "1887436800 bytes" in str(raised)
    assert peak < 20_000_000


def test_default_decoded_budget_is_well_under_the_api_memory_limit() -> None:
    assert Limits().max_decoded_bytes <= 512 * 2**20
