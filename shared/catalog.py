"""The data set catalog: uploaded data sets in the object store, indexed in Redis, each
visible to its owner (and admins)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from redis import Redis

from shared.auth import Principal
from shared.datasets import ParsedDataset, to_npz_bytes
from shared.jobs import RedisKeys
from shared.schemas import DatasetPublic
from shared.storage import ArtifactStore, DatasetKeys
from shared.zoo import BUILTIN_DATASETS, DatasetInfo, upload_split


class DatasetNotFound(KeyError):
    def __init__(self, dataset_id: str) -> None:
        super().__init__(dataset_id)
        self.dataset_id = dataset_id

    def __str__(self) -> str:
        return f"no data set {self.dataset_id!r}"


class DatasetCatalog:
    """Uploads are stored as datasets/{id}/data.npz, then meta.json (the commit), then indexed."""

    def __init__(self, redis: Redis, store: ArtifactStore, prefix: str = "trainyard") -> None:
        self.redis, self.store = redis, store
        self.key = RedisKeys(prefix).datasets()

    def add(self, parsed: ParsedDataset, owner: str, name: str | None = None) -> DatasetPublic:
        """Store a validated upload and return its record."""
        dataset_id = "ds-" + uuid.uuid4().hex[:16]
        keys = DatasetKeys(dataset_id)
        data = to_npz_bytes(parsed)
        n, h, w, c = parsed.x.shape
        meta = DatasetPublic(
            id=dataset_id,
            owner=owner,
            name=name,
            format=parsed.format,
            image=(c, h, w),
            num_images=n,
            num_classes=len(parsed.classes),
            classes=parsed.classes,
            size_bytes=len(data),
            created_at=datetime.now(UTC),
        )
        self.store.put_bytes(keys.data, data)
        self.store.put_bytes(keys.meta, meta.model_dump_json().encode(), "application/json")
        self.redis.hset(self.key, dataset_id, meta.model_dump_json())
        return meta

    def get(self, dataset_id: str, principal: Principal) -> DatasetPublic:
        """The data set, if `principal` may see it; DatasetNotFound otherwise."""
        raw = self.redis.hget(self.key, dataset_id)
        if raw is None:
            raise DatasetNotFound(dataset_id)
        found = DatasetPublic.model_validate_json(raw)
        if not principal.can_see(found.owner):
            raise DatasetNotFound(dataset_id)
        return found

    def list_for(self, principal: Principal) -> list[DatasetPublic]:
        """Uploaded data sets the principal may see, newest first."""
        found = [DatasetPublic.model_validate_json(v) for v in self.redis.hvals(self.key)]
        mine = [d for d in found if principal.can_see(d.owner)]
        return sorted(mine, key=lambda d: d.created_at, reverse=True)

    def info_any(self, name: str) -> DatasetInfo:
        """The data set's shape for internal use (workers), whoever owns it."""
        return self.info(name, "", admin=True)

    def info(self, name: str, owner: str, admin: bool = False) -> DatasetInfo:
        """What a job spec's `dataset` names: a built-in set or the owner's upload."""
        if name in BUILTIN_DATASETS:
            return BUILTIN_DATASETS[name]
        meta = self.get(name, Principal(owner, admin))
        n_train, n_test = upload_split(meta.num_images)
        return DatasetInfo(
            meta.id,
            meta.image,
            meta.num_classes,
            n_train,
            max(n_test, 1),
            f"upload ({meta.format})",
        )
