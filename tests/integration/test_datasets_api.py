"""Data sets: uploads in every accepted format train a job; malformed ones store nothing;
the mnist download path works from the object-store cache without a network."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from minio import Minio
from PIL import Image

from devstack.stack import Stack
from shared.client import Client
from shared.datasets import write_idx
from shared.schemas import DatasetPublic
from shared.status import JobStatus
from shared.storage import DatasetKeys
from tests.integration.conftest import UPLOAD_LIMIT
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
