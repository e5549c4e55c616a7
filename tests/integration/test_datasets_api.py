"""Data sets: uploads in every accepted format train a job; malformed ones store nothing;
the mnist download path works from the object-store cache without a network."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from minio import Minio
from PIL import Image
from redis import Redis

from devstack.stack import Stack
from shared.schemas import DatasetPublic
from shared.status import JobStatus
from shared.storage import DatasetKeys, S3ArtifactStore
from shared.uploads import from_npz_bytes, write_idx
from tests.integration.conftest import UPLOAD_LIMIT
from trainyard.client import Client
from workers.trainer.data import load_dataset

Files = list[tuple[str, tuple[str, bytes, str]]]


def _mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("mnist-5k")  # its train split is sorted by class: take a spread
    pick = slice(None, None, len(data.train_x) // n)
    return data.train_x[pick, 0][:n].numpy(), data.train_y[pick][:n].numpy()


def idx_gz() -> Files:
    x, y = _mnist(200)
    return [
        ("files", ("train-images-idx3-ubyte.gz", gzip.compress(write_idx(x)), "application/gzip")),
        (
            "files",
            (
                "train-labels-idx1-ubyte.gz",
                gzip.compress(write_idx(y.astype(np.uint8))),
                "application/gzip",
            ),
        ),
    ]


def idx_raw() -> Files:
    x, y = _mnist(150)
    return [
        ("files", ("images.idx3", write_idx(x), "application/octet-stream")),
        ("files", ("labels.idx1", write_idx(y.astype(np.uint8)), "application/octet-stream")),
    ]


def npz_colour() -> Files:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=rng.integers(0, 3, 120), classes=np.array(["cat", "dog", "owl"]))
    return [("files", ("pets.npz", buf.getvalue(), "application/octet-stream"))]


def zip_folders() -> Files:
    x, y = _mnist(60)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            png = io.BytesIO()
            Image.fromarray(img).save(png, format="PNG")
            zf.writestr(f"digits/{label}/{i}.png", png.getvalue())
    return [("files", ("digits.zip", buf.getvalue(), "application/zip"))]


CGAN = {"task": "cgan", "model": "conv_cgan", "max_steps": 3}
ACCEPTED: dict[str, tuple[Callable[[], Files], tuple[int, int, int], int, dict[str, object]]] = {
    "idx-gzip": (idx_gz, (1, 28, 28), 10, {"task": "classifier", "max_steps": 5}),
    "idx-raw": (idx_raw, (1, 28, 28), 10, {**CGAN, "model": "book_cgan", "max_steps": 5}),
    "npz-colour": (npz_colour, (3, 32, 32), 3, CGAN),
    "zip-folders": (zip_folders, (1, 28, 28), 10, {"task": "gan", "max_steps": 3}),
}


@pytest.mark.parametrize("fmt", list(ACCEPTED))
def test_upload_round_trips_into_a_job(fmt: str, http: httpx.Client, client: Client) -> None:
    make, image, classes, job = ACCEPTED[fmt]
    response = http.post("/v1/datasets", files=make(), data={"name": fmt})
    assert response.status_code == 201, response.text
    ds = DatasetPublic.model_validate(response.json())
    assert ds.image == image and ds.num_classes == classes and ds.name == fmt
    listed = http.get("/v1/datasets").json()["data"]
    assert ds.id in {d["id"] for d in listed}
    assert http.get(f"/v1/datasets/{ds.id}").json()["id"] == ds.id
    done = client.wait(client.submit({**job, "dataset": ds.id}).id, timeout=300)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.result is not None and done.result["dataset"] == ds.id


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="PNG")
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _one(name: str, data: bytes) -> Files:
    return [("files", (name, data, "application/octet-stream"))]


x8 = np.zeros((8, 28, 28), dtype=np.uint8)
labels8 = write_idx(np.zeros(8, np.uint8))
digits = np.array(list("abcdefghij"))
MALFORMED: dict[str, tuple[Files, int, str]] = {
    "wrong magic": (
        _one("images.idx3", b"\x00\x00\x08\x02" + b"\x00" * 20) + _one("labels.idx1", labels8),
        400,
        "magic",
    ),
    "x/y lengths": (_one("d.npz", _npz(x=x8, y=np.zeros(5, np.int64))), 422, "8"),
    "label range": (_one("d.npz", _npz(x=x8, y=np.full(8, 12), classes=digits)), 422, "12"),
    "zip escape": (_one("d.zip", _zip({"../evil/a.png": _png_bytes()})), 400, ".."),
    "zip symlink": (
        _one("d.zip", _zip({"a/1.png": _png_bytes()}, symlink="a/link.png")),
        400,
        "link",
    ),
    "oversize": (_one("big.npz", b"\x00" * (UPLOAD_LIMIT + 10)), 413, "limit"),
    "unknown files": (_one("notes.txt", b"hello"), 400, "notes.txt"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_upload_is_rejected_and_nothing_is_stored(
    case: str, stack: Stack, http: httpx.Client, minio_client: Minio
) -> None:
    files, status, says = MALFORMED[case]
    url = "/v1/datasets"
    before_listed = http.get(url).json()["count"]
    before_stored = len(
        list(minio_client.list_objects(stack.config.bucket, prefix="datasets/ds-", recursive=True))
    )
    response = http.post(url, files=files)
    assert response.status_code == status, response.text
    assert says.lower() in response.json()["error"]["message"].lower()
    assert http.get(url).json()["count"] == before_listed
    after_stored = len(
        list(minio_client.list_objects(stack.config.bucket, prefix="datasets/ds-", recursive=True))
    )
    assert after_stored == before_stored


def test_unknown_dataset_is_404(http: httpx.Client) -> None:
    assert http.get("/v1/datasets/ds-0000000000000000").status_code == 404


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_torchvision_sets_load_from_the_object_store_cache(
    name: str, stack: Stack, client: Client, minio_client: Minio
) -> None:
    """No network here: pre-seed the shared cache with IDX files made from mnist-5k, as the
    first worker to download would have left it; the job must train from it."""
    from torchvision.datasets import MNIST, FashionMNIST

    cls = {"mnist": MNIST, "fashion-mnist": FashionMNIST}[name]
    data = load_dataset("mnist-5k")
    arrays = {
        "train-images-idx3-ubyte": data.train_x[:, 0].numpy(),
        "train-labels-idx1-ubyte": data.train_y.numpy().astype(np.uint8),
        "t10k-images-idx3-ubyte": data.test_x[:, 0].numpy(),
        "t10k-labels-idx1-ubyte": data.test_y.numpy().astype(np.uint8),
    }
    keys = DatasetKeys.builtin(name)
    for url, _ in cls.resources:
        filename = url.rsplit("/", 1)[-1]
        payload = gzip.compress(write_idx(arrays[filename.removesuffix(".gz")]))
        minio_client.put_object(
            stack.config.bucket, keys.file(filename), io.BytesIO(payload), len(payload)
        )
    job = client.wait(
        client.submit({"task": "classifier", "dataset": name, "epochs": 1}).id, timeout=300
    )
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.total_steps == 32  # 4,000 cached training images in batches of 128
    cached = stack.config.root / "data" / name / cls.__name__ / "raw"
    assert (cached / "train-images-idx3-ubyte").exists()


# --------------------------------------------------------------------------------------------
# Issue 14: images stored as a viewer shows them, bombs and quotas refused with numbers


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _cp866_zip(entries: dict[str, bytes]) -> bytes:
    """A zip whose entry names are cp866 bytes without the UTF-8 flag (old Windows tools):
    written under ASCII stand-ins of the same length, then patched in place."""
    raw = {name.encode("cp866"): data for name, data in entries.items()}
    stand_ins = {chr(ord("A") + i).encode() * len(name): name for i, name in enumerate(raw)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for stand_in, data in zip(stand_ins, raw.values(), strict=True):
            zf.writestr(stand_in.decode(), data)
    out = buf.getvalue()
    for stand_in, name in stand_ins.items():
        out = out.replace(stand_in, name)
    return out


def test_images_are_stored_as_a_viewer_shows_them(http: httpx.Client, s3: S3ArtifactStore) -> None:
    ink = np.zeros((20, 30), dtype=bool)
    ink[5:15, 10:12] = True
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)  # black ink on transparent black
    rgba[ink] = (0, 0, 0, 255)
    grey16 = np.where(ink, 50000, 2000).astype(np.uint16)
    shown = np.zeros((20, 30, 3), dtype=np.uint8)  # a phone photo, shown 30 wide by 20 high
    shown[:10, :15], shown[10:, 15:] = (200, 30, 40), 255
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # stored 20x30; viewers turn it 90 degrees clockwise
    photo = io.BytesIO()
    Image.fromarray(np.rot90(shown, 1)).save(
        photo, format="JPEG", quality=100, subsampling=0, exif=exif.tobytes()
    )
    zipped = _cp866_zip(
        {
            "кошка/1.png": _png(Image.fromarray(rgba, "RGBA")),
            "собака/1.png": _png(Image.fromarray(grey16)),
            "фото/1.jpg": photo.getvalue(),
        }
    )
    response = http.post(
        "/v1/datasets", files=_one("old.zip", zipped), data={"name_encoding": "cp866"}
    )
    assert response.status_code == 201, response.text
    ds = DatasetPublic.model_validate(http.get(f"/v1/datasets/{response.json()['id']}").json())
    assert ds.classes == ["кошка", "собака", "фото"] and ds.image == (3, 20, 30)

    stored = from_npz_bytes(s3.get_bytes(DatasetKeys(ds.id).data))
    white_ink = np.full((20, 30, 3), 255, dtype=np.uint8)
    white_ink[ink] = 0
    np.testing.assert_array_equal(stored.x[0], white_ink)
    grey = np.where(ink, 195, 8).astype(np.uint8)  # round(value / 257)
    np.testing.assert_array_equal(stored.x[1], np.repeat(grey[..., None], 3, axis=2))
    assert np.abs(stored.x[2].astype(int) - shown.astype(int)).max() <= 3  # JPEG


def _stored_count(stack: Stack, minio_client: Minio) -> int:
    found = minio_client.list_objects(stack.config.bucket, prefix="datasets/ds-", recursive=True)
    return len(list(found))


def _big_images_zip() -> bytes:
    one = _png(Image.new("RGB", (1024, 1024), (10, 20, 30)))
    return _zip({f"c{i % 3}/{i}.png": one for i in range(600)})  # 1.9 GB of pixels


def _idx_bomb() -> bytes:
    # A real header for 3000 images of 1024x1024 (3 GiB), then the start of its pixels.
    return gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 3000, 1024, 1024) + bytes(2**20))


REFUSED: dict[str, tuple[Files, dict[str, str], int, list[str], str | None]] = {
    "gzip idx bomb": (
        _one("train-images.gz", _idx_bomb()),
        {},
        413,
        ["decoded images take 3145728000"],
        None,
    ),
    "zip of large images": (
        _one("big.zip", _big_images_zip()),
        {},
        413,
        ["decoded images take 1887436800"],
        None,
    ),
    "unknown name_encoding": (
        _one("d.zip", _zip({"a/1.png": _png_bytes()})),
        {"name_encoding": "nope"},
        422,
        ["'nope'"],
        "name_encoding",
    ),
    "long class name": (
        _one("d.zip", _zip({"c" * 65 + "/1.png": _png_bytes()})),
        {},
        422,
        ["at most 64"],
        None,
    ),
    "control character in a class name": (
        _one("d.zip", _zip({"a\x07b/1.png": _png_bytes()})),
        {},
        422,
        ["control"],
        None,
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bombs_and_odd_names_are_refused_and_nothing_is_stored(
    case: str, stack: Stack, http: httpx.Client, minio_client: Minio
) -> None:
    files, data, status, says, field = REFUSED[case]
    before = _stored_count(stack, minio_client)
    response = http.post("/v1/datasets", files=files, data=data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for part in says:
        assert part in error["message"]
    assert error.get("field") == field
    assert _stored_count(stack, minio_client) == before


def test_owner_quotas_are_429_and_413_with_the_numbers(
    stack: Stack, as_user: dict[str, Client], redis: Redis, minio_client: Minio
) -> None:
    settings = stack.config.settings()
    index = f"{settings.KEY_PREFIX}:owner:bob:datasets"
    fake = [f"ds-quota-{i}" for i in range(settings.DATASETS_MAX_PER_OWNER)]
    before = _stored_count(stack, minio_client)
    upload = _one("d.zip", _zip({"a/1.png": _png_bytes()}))
    http = as_user["bob"].http
    try:
        with redis.pipeline() as pipe:  # bob "has" the most data sets allowed
            for fake_id in fake:
                pipe.hset(index, fake_id, 1)
            pipe.execute()
        response = http.post("/v1/datasets", files=upload)
        assert response.status_code == 429, response.text
        limit = settings.DATASETS_MAX_PER_OWNER
        assert f"{limit} data sets; the limit is {limit}" in response.json()["error"]["message"]

        redis.delete(index)
        almost = settings.DATASETS_MAX_BYTES_PER_OWNER - 10  # room for 10 more bytes only
        redis.hset(index, "ds-quota-0", almost)
        response = http.post("/v1/datasets", files=upload)
        assert response.status_code == 413, response.text
        message = response.json()["error"]["message"]
        assert f"take {almost} stored bytes" in message and "would add" in message
        assert str(settings.DATASETS_MAX_BYTES_PER_OWNER) in message
    finally:
        redis.hdel(index, *fake)
    assert _stored_count(stack, minio_client) == before
