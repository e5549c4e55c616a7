"""One contract suite run against every ArtifactStore: the real S3 server and a folder."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
import pytest

from shared.storage import ArtifactNotFound, ArtifactStore, LocalArtifactStore, S3ArtifactStore


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "s3":
        return request.getfixturevalue("s3")
    return LocalArtifactStore(tmp_path)


def test_put_get_list(store: ArtifactStore, request: pytest.FixtureRequest) -> None:
    prefix = f"contract/{request.node.name}/"
    store.put_bytes(prefix + "b.bin", b"\x00" * 10)
    store.put_bytes(prefix + "a/x.json", b"{}", "application/json")
    assert store.get_bytes(prefix + "a/x.json") == b"{}"
    assert [(o.key, o.size) for o in store.list_prefix(prefix)] == [
        (prefix + "a/x.json", 2),
        (prefix + "b.bin", 10),
    ]
    store.put_bytes(prefix + "b.bin", b"new")  # overwrite
    assert store.get_bytes(prefix + "b.bin") == b"new"
    assert store.exists(prefix + "b.bin") and not store.exists(prefix + "zzz")


def test_missing_key(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("contract/does/not/exist")
    assert store.list_prefix("contract/nothing-here/") == []


def test_url_serves_the_bytes(store: ArtifactStore, request: pytest.FixtureRequest) -> None:
    key = f"contract/{request.node.name}/obj"
    store.put_bytes(key, b"payload")
    url = store.url(key, timedelta(minutes=5))
    if isinstance(store, S3ArtifactStore):
        assert httpx.get(url).content == b"payload"
    else:
        assert Path(unquote(urlparse(url).path)).read_bytes() == b"payload"
    store.ping()


def test_wrong_credentials_are_refused(s3: S3ArtifactStore) -> None:
    from minio import Minio

    endpoint = s3.client._base_url.host
    bad = Minio(
        endpoint, access_key="nobody", secret_key="wrong-secret", secure=False, region="us-east-1"
    )
    with pytest.raises(Exception, match=r"(?i)access|denied|signature|invalid"):
        S3ArtifactStore(bad, s3.bucket).get_bytes("contract/anything")
