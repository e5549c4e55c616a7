"""The input of POST /v1/jobs/{id}/predict, decoded in the API (torch-free): images normalised
as uploads are and resized to the job's shape; .npz batches checked before they are loaded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from shared.uploads import DatasetError
from shared.uploads.predict import parse_predict_input
from tests.unit.test_datasets import lying_npz

MNIST = (1, 28, 28)
MAX_BYTES = 32 * 2**20
DECODED = 64 * 2**20  # PREDICT_DECODED_MAX_BYTES's default
NOISE = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)


def _png(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def parse(
    data: bytes, image: tuple[int, int, int] = MNIST, most: int = 1024, decoded: int = DECODED
) -> np.ndarray:
    return parse_predict_input("x", data, image, most, MAX_BYTES, decoded)


def test_a_grey_png_of_the_jobs_size_is_taken_as_it_is() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    out = parse(_png(Image.fromarray(pixels)))
    assert out.shape == (1, 1, 28, 28) and out.dtype == np.uint8
    assert np.array_equal(out[0, 0], pixels)


def test_other_sizes_and_modes_are_normalised_then_resized_with_lanczos() -> None:
    rgba = Image.new("RGBA", (56, 40), (0, 0, 0, 0))  # transparent: white once composited
    out = parse(_png(rgba))
    assert out.shape == (1, 1, 28, 28) and (out == 255).all()
    grey = Image.fromarray(np.tile(np.arange(56, dtype=np.uint8) * 4, (56, 1)))
    expected = np.asarray(grey.resize((28, 28), Image.Resampling.LANCZOS))
    assert np.array_equal(parse(_png(grey))[0, 0], expected)
    colour = parse(_png(Image.new("RGB", (32, 32), (255, 0, 0))), image=(3, 28, 28))
    assert colour.shape == (1, 3, 28, 28) and (colour[0, 0] == 255).all()
    buf = io.BytesIO()
    Image.new("L", (10, 20), 200).save(buf, format="JPEG")
    assert parse(buf.getvalue()).shape == (1, 1, 28, 28)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("L", (20, 10), 0)  # 20 wide; rotated 90 degrees: 10 wide, 20 high
    img.paste(255, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=100)
    out = parse(buf.getvalue(), image=(1, 20, 10))
    assert out.shape == (1, 1, 20, 10)
    assert out[0, 0, :10].mean() > 200 and out[0, 0, 10:].mean() < 50  # the white half on top


def test_npz_batches_of_the_jobs_shape() -> None:
    x = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    assert np.array_equal(parse(_npz(images=x)), x[:, None])
    assert np.array_equal(parse(_npz(x=x[:, None])), x[:, None])


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"hello, not an image", "not a PNG, a JPEG or an .npz"),
        (_png(Image.fromarray(NOISE))[:300], "cannot be decoded"),
        (_npz(x=np.zeros((2, 1, 32, 32), np.uint8)), "(N, 1, 28, 28) or (N, 28, 28)"),
        (_npz(x=np.zeros((2, 28, 28), np.float32)), "dtype float32"),
        (_npz(x=np.zeros((1025, 28, 28), np.uint8)), "1025"),
        (_npz(x=np.zeros((1, 28, 28), np.uint8), y=np.zeros(1)), "exactly one"),
        (_npz(x=np.zeros((0, 28, 28), np.uint8)), "0 images"),
        (b"PK\x03\x04 not really a zip", "not an .npz"),
        (_npz(), "holds 0 arrays"),  # an empty zip: PK\x05\x06, not "not an .npz"
    ],
    ids=[
        "text",
        "truncated-png",
        "shape",
        "float",
        "too-many",
        "two-arrays",
        "empty",
        "broken-zip",
        "no-arrays",
    ],
)
def test_refusals_are_422s_naming_file(data: bytes, words: str) -> None:
    with pytest.raises(DatasetError) as caught:
        parse(data)
    assert (caught.value.status, caught.value.field) == (422, "file")
    assert words in str(caught.value)


def _refused_413(data: bytes, **kwargs: object) -> str:
    """The 413 naming `file` that parsing `data` gives, without loading its arrays."""
    loaded = np.load
    with pytest.MonkeyPatch.context() as patch:  # decoding anything would fail the test
        patch.setattr(np, "load", lambda *a, **k: pytest.fail("decoded before refusing"))
        patch.setattr(Image.Image, "load", lambda *a: pytest.fail("decoded before refusing"))
        with pytest.raises(DatasetError) as caught:
            parse(data, **kwargs)  # type: ignore[arg-type]
    assert np.load is loaded
    assert (caught.value.status, caught.value.field) == (413, "file"), str(caught.value)
    return str(caught.value)


def test_a_deflate_bomb_is_a_413_on_its_headers() -> None:
    """1024 images of 1024 x 1024 zeros compress to ~1 MB; the header says 1 GiB."""
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((1024, 1024, 1024), np.uint8))
    message = _refused_413(buf.getvalue())
    assert "uncompressed size is 1073741952 bytes" in message
    assert "PREDICT_DECODED_MAX_BYTES (67108864)" in message
    assert "the limit is" in _refused_413(lying_npz())


def test_a_batch_of_the_jobs_shape_over_the_decoded_cap_is_a_413_before_decoding() -> None:
    """1,024 colour 128 x 128 images are 50 MB decoded; zeros compress to ~50 KB. With the
    cap at 32 MiB they are refused from the .npy header, naming the numbers."""
    image = (3, 128, 128)
    data = _npz(x=np.zeros((1024, *image), np.uint8))
    assert len(data) < 2**20
    message = _refused_413(data, image=image, decoded=32 * 2**20)
    assert "uncompressed size is 50331776 bytes; the limit is 33554432 bytes" in message
    assert parse(_npz(x=np.zeros((8, *image), np.uint8)), image=image, decoded=2**20).shape == (
        8,
        *image,
    )


def test_an_image_over_the_decoded_cap_is_a_413_before_decoding() -> None:
    """An image's size comes from its header, at 4 bytes a pixel (what Pillow may hold while
    decoding): 1000 x 1000 is 4,000,000 bytes."""
    data = _png(Image.new("L", (1000, 1000), 0))
    message = _refused_413(data, decoded=3_999_999)
    assert "4000000 bytes" in message and "the limit is 3999999 bytes" in message
    assert parse(data, decoded=4_000_000).shape == (1, 1, 28, 28)


def test_a_phone_photo_of_any_side_is_taken_and_resized() -> None:
    """A 4032 x 3024 photo (36 MB decoded as RGB, under the 64 MiB default): sides are bounded
    by the decoded size alone, not by the uploads' 1,024 px."""
    buf = io.BytesIO()
    Image.new("RGB", (3024, 4032), (255, 255, 255)).save(buf, format="JPEG", quality=50)
    out = parse(buf.getvalue())
    assert out.shape == (1, 1, 28, 28) and (out > 250).all()


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height grey pixels, with one tiny IDAT after it."""
    small = _png(Image.new("L", (1, 1), 0))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return small[:8] + chunk + small[8 + 25 :]


def test_a_png_declaring_20000_by_20000_pixels_is_a_413_from_its_header() -> None:
    message = _refused_413(_header_only_png(20_000, 20_000))
    assert "too large an image" in message or "the limit is" in message


def test_the_predict_routes_body_rule_matches_any_job_id() -> None:
    from services.api.limits import JSON, MULTIPART, BodyRule, RequestGuard

    default, predict = BodyRule(JSON, 10), BodyRule(MULTIPART, 20)
    guard = RequestGuard(
        app=None,  # type: ignore[arg-type]
        tokens=None,  # type: ignore[arg-type]
        default=default,
        rules={("POST", "/v1/jobs/*/predict"): predict},
    )
    assert guard._rule("POST", "/v1/jobs/0123456789abcdef/predict") is predict
    assert guard._rule("GET", "/v1/jobs/0123456789abcdef/predict") is default
    assert guard._rule("POST", "/v1/jobs//predict") is default  # a segment, not nothing
    assert guard._rule("POST", "/v1/jobs/a/b/predict") is default
    assert guard._rule("POST", "/v1/jobs/a/samples") is default
