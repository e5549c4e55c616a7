"""The data set catalog: uploaded data sets in the object store, indexed in Redis, each
visible to its owner (and admins)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from redis import Redis

from shared.auth import Principal
from shared.config import Settings, get_settings
from shared.schemas import DatasetPublic, first_unprintable
from shared.state.keys import RedisKeys
from shared.storage import ArtifactStore, DatasetKeys
from shared.uploads import DatasetError, Limits, ParsedDataset, parse_upload, to_npz_bytes
from shared.uploads.slots import ParseSlots
from shared.zoo import BUILTIN_DATASETS, DatasetInfo, upload_split


class DatasetNotFound(KeyError):
    def __init__(self, dataset_id: str) -> None:
        super().__init__(dataset_id)
        self.dataset_id = dataset_id

    def __str__(self) -> str:
        return f"no data set {self.dataset_id!r}"


# Reserve a place in an owner's quota, atomically: {prefix}:owner:{owner}:datasets is a HASH
# of data set id -> stored bytes. Returns {0, count, bytes} when reserved, {1, ...} when the
# owner is at the count limit, {2, ...} when the new size would take them over the byte limit.
_RESERVE = """
local n = redis.call('HLEN', KEYS[1])
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
if n >= tonumber(ARGV[3]) then return {1, n, total} end
if total + tonumber(ARGV[2]) > tonumber(ARGV[4]) then return {2, n, total} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {0, n, total}
"""


class DatasetCatalog:
    """Uploads are stored as datasets/{id}/data.npz, then meta.json (the commit), then indexed.

    Limits and quotas come from `settings` (the process's Settings when None):
    UPLOAD_MAX_BYTES, UPLOAD_DECODED_MAX_BYTES, UPLOAD_PARSE_CONCURRENCY, UPLOAD_PARSE_WAIT_S,
    DATASETS_MAX_PER_OWNER, DATASETS_MAX_BYTES_PER_OWNER."""

    def __init__(
        self,
        redis: Redis,
        store: ArtifactStore,
        prefix: str = "trainyard",
        settings: Settings | None = None,
    ) -> None:
        self.redis, self.store = redis, store
        self.keys = RedisKeys(prefix)
        self.key = self.keys.datasets()
        self.settings = settings or get_settings()
        self.limits = Limits(
            max_upload_bytes=self.settings.UPLOAD_MAX_BYTES,
            max_decoded_bytes=self.settings.UPLOAD_DECODED_MAX_BYTES,
        )
        # At most this many uploads read and parsed at a time in this process: each may hold
        # its body and ~2x the decoded budget (pixels, encoded npz).
        self._upload_slots = ParseSlots(
            self.settings.UPLOAD_PARSE_CONCURRENCY,
            self.settings.UPLOAD_PARSE_WAIT_S,
            "uploads",
            "TRAINYARD_UPLOAD_PARSE_CONCURRENCY",
        )
        self._reserve = redis.register_script(_RESERVE)
        self._owner_index_ready = False

    # ----------------------------------------------------------------------------------------
    # Quotas

    def _owner_key(self, owner: str) -> str:
        return self.keys.owner_datasets(owner)

    def _ensure_owner_index(self) -> None:
        """Data sets stored before the per-owner index existed are indexed once."""
        if self._owner_index_ready:
            return
        done = f"{self.key}:owner-index"
        if not self.redis.exists(done):
            for _, raw in self.redis.hscan_iter(self.key):
                meta = DatasetPublic.model_validate_json(raw)
                self.redis.hsetnx(self._owner_key(meta.owner or ""), meta.id, meta.size_bytes)
            self.redis.set(done, 1)
        self._owner_index_ready = True

    def usage(self, owner: str) -> tuple[int, int]:
        """(data sets, stored bytes) the owner has now."""
        self._ensure_owner_index()
        sizes = self.redis.hvals(self._owner_key(owner))
        return len(sizes), sum(int(v) for v in sizes)

    def check_quota(self, owner: str) -> None:
        """Refuse an upload before its body is read when the owner has no room left: 429 at
        DATASETS_MAX_PER_OWNER data sets, 413 at DATASETS_MAX_BYTES_PER_OWNER stored bytes.
        Two Redis reads; raises DatasetError with the numbers."""
        count, stored = self.usage(owner)
        self._refuse_over_quota(owner, count, stored, 0)

    def _refuse_over_quota(self, owner: str, count: int, stored: int, adding: int) -> None:
        s = self.settings
        if count >= s.DATASETS_MAX_PER_OWNER:
            raise DatasetError(
                429,
                f"{owner} has {count} data sets; the limit is {s.DATASETS_MAX_PER_OWNER} per "
                "owner (TRAINYARD_DATASETS_MAX_PER_OWNER)",
            )
        if stored + adding > s.DATASETS_MAX_BYTES_PER_OWNER or (
            adding == 0 and stored >= s.DATASETS_MAX_BYTES_PER_OWNER
        ):
            what = f"; this upload would add {adding} bytes" if adding else ""
            raise DatasetError(
                413,
                f"{owner}'s data sets take {stored} stored bytes{what}; the limit is "
                f"{s.DATASETS_MAX_BYTES_PER_OWNER} bytes per owner "
                "(TRAINYARD_DATASETS_MAX_BYTES_PER_OWNER)",
            )

    # ----------------------------------------------------------------------------------------
    # Upload

    def ingest(
        self,
        files: dict[str, bytes],
        owner: str,
        name: str | None = None,
        name_encoding: str | None = None,
    ) -> DatasetPublic:
        """Parse an upload ({file name: content}) and store it for `owner`: the quota check,
        a parse within the limits, then `add`, which refuses it if it would take the owner
        over their stored-bytes quota. The API calls it inside upload_slot(), which also
        covers reading the body. Every refusal is a DatasetError (status, message naming the
        file or field); nothing is stored then."""
        if name is not None:
            _check_text_field("name", name, 100)
        self.check_quota(owner)
        parsed = parse_upload(files, self.limits, name_encoding=name_encoding)
        return self.add(parsed, owner, name)

    @asynccontextmanager
    async def upload_slot(self) -> AsyncIterator[None]:
        """Hold one of this process's UPLOAD_PARSE_CONCURRENCY upload slots (ParseSlots), from
        before the body is read until the upload is stored, so uploads in flight hold at most
        that many bodies; DatasetError(503, retry_after_s=5) when none frees up within
        UPLOAD_PARSE_WAIT_S (nothing of the body is read then)."""
        async with self._upload_slots.hold():
            yield

    def add(self, parsed: ParsedDataset, owner: str, name: str | None = None) -> DatasetPublic:
        """Store a validated upload and return its record. DatasetError (413/429 with the
        numbers) when it would take the owner over their quota; nothing is stored then."""
        dataset_id = "ds-" + uuid.uuid4().hex[:16]
        keys = DatasetKeys(dataset_id)
        data = to_npz_bytes(parsed)
        self._ensure_owner_index()
        owner_key = self._owner_key(owner)
        s = self.settings
        refused, count, stored = self._reserve(
            keys=[owner_key],
            args=[dataset_id, len(data), s.DATASETS_MAX_PER_OWNER, s.DATASETS_MAX_BYTES_PER_OWNER],
        )
        if refused:
            self._refuse_over_quota(owner, int(count), int(stored), len(data))
            raise AssertionError("quota script refused within the limits")  # unreachable
        try:
            return self._store(dataset_id, keys, parsed, data, owner, name)
        except BaseException:
            self.redis.hdel(owner_key, dataset_id)
            raise

    def _store(
        self,
        dataset_id: str,
        keys: DatasetKeys,
        parsed: ParsedDataset,
        data: bytes,
        owner: str,
        name: str | None,
    ) -> DatasetPublic:
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


def _check_text_field(field: str, value: str, most: int) -> None:
    """A user-given label: at most `most` characters, no control or line-break characters."""
    if len(value) > most:
        raise DatasetError(
            422, f"{field} is {len(value)} characters; at most {most} are allowed", field=field
        )
    bad = first_unprintable(value)
    if bad is not None:
        raise DatasetError(
            422,
            f"{field} contains the invisible or control character {bad!r} (U+{ord(bad):04X}); "
            "expected text",
            field=field,
        )
