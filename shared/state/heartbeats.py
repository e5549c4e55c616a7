"""Which workers are online and busy, from heartbeats in Redis (what "why is my job pending"
and the queue metrics read), their thread reports, and drain requests."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.schemas import WorkerPublic
from shared.state.keys import RedisKeys, text

ONLINE_WITHIN_S = 20.0  # heartbeats come every 5 s
FORGET_AFTER_S = 3600.0  # a worker record this old is dropped (WorkerRegistry.prune)


class WorkerRegistry:
    CACHE_S = 1.0  # how stale aonline() may be

    def __init__(
        self, redis: Redis, prefix: str = "trainyard", aredis: AsyncRedis | None = None
    ) -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)
        self._aredis = aredis  # the API's hot paths read with it
        self._cached: tuple[float, list[WorkerPublic]] = (-1e9, [])

    def heartbeat(self, name: str, info: dict[str, object] | None = None) -> None:
        """Called by each worker every few seconds (from its event loop)."""
        record = {"name": name, "seen": time.time(), **(info or {})}
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.workers(), name, json.dumps(record))
        # The thread report lives as long as the heartbeats: a killed worker's expires.
        pipe.expire(self._threads_key(name), int(3 * ONLINE_WITHIN_S))
        pipe.execute()

    def prune(self, older_than_s: float) -> list[str]:
        """Drop the records of workers not seen for `older_than_s` seconds (killed without
        a goodbye: SIGKILL, a lost node; each new replica has a new name, so they would pile
        up); returns their names. The reconciler calls it on each pass."""
        now = time.time()
        stale = [
            name
            for name, raw in self.redis.hgetall(self.keys.workers()).items()
            if now - float(json.loads(raw).get("seen", 0)) > older_than_s
        ]
        if stale:
            self.redis.hdel(self.keys.workers(), *stale)
        return [text(name) for name in stale]

    def set_busy(self, name: str, job_id: str | None, ttl_s: float) -> None:
        if job_id is None:
            self.redis.delete(self.keys.worker_busy(name))
        else:
            self.redis.set(self.keys.worker_busy(name), job_id, px=int(ttl_s * 1000))

    def request_drain(self, name: str, ttl_s: float) -> None:
        """Tell worker `name` to hand its jobs back (SIGTERM): a flag kept `ttl_s`, and a
        "drain" message on its control channel for the job it runs now."""
        pipe = self.redis.pipeline()
        pipe.set(self.keys.worker_draining(name), "1", ex=max(1, int(ttl_s)))
        pipe.publish(self.keys.worker_control(name), "drain")
        pipe.execute()

    def clear_drain(self, name: str) -> None:
        """Called as a worker starts: a drain flag left by an earlier process is not for it."""
        self.redis.delete(self.keys.worker_draining(name))

    def draining(self, name: str) -> bool:
        return bool(self.redis.exists(self.keys.worker_draining(name)))

    def forget(self, name: str) -> None:
        self.redis.hdel(self.keys.workers(), name)
        self.redis.delete(self._threads_key(name))

    # Each pool process of a worker reports the thread counts it actually set (see
    # workers/trainer/cpu.py); the worker's heartbeat carries them.

    def _threads_key(self, name: str) -> str:
        return self.keys.worker_threads(name)

    def clear_threads(self, name: str) -> None:
        """Called as a worker starts, before its pool processes report."""
        self.redis.delete(self._threads_key(name))

    def report_threads(self, name: str, pid: int, threads: Mapping[str, object]) -> None:
        """What pool process `pid` of worker `name` runs with (cpu.ThreadPlan fields)."""
        self.redis.hset(self._threads_key(name), str(pid), json.dumps(threads))

    def threads(self, name: str) -> dict[str, object]:
        """The thread counts the worker's pool processes reported (the lowest pid's); {}
        before any has."""
        reports = self.redis.hgetall(self._threads_key(name))
        if not reports:
            return {}
        first = min(reports, key=lambda pid: int(pid))
        return dict(json.loads(reports[first]))

    def online(self) -> list[WorkerPublic]:
        """Workers seen within ONLINE_WITHIN_S, with the job each is busy with (2 round trips)."""
        records = _fresh(self.redis.hvals(self.keys.workers()))
        if not records:
            return []
        return _with_busy(records, self.redis.mget(self._busy_keys(records)))

    async def aonline(self) -> list[WorkerPublic]:
        """online() on the asyncio client, at most CACHE_S old: the API asks on every submit
        and every read of a queued job, and the answer moves with 5 s heartbeats."""
        assert self._aredis is not None, "WorkerRegistry was made without an asyncio client"
        taken, found = self._cached
        if time.monotonic() - taken < self.CACHE_S:
            return found
        records = _fresh(await self._aredis.hvals(self.keys.workers()))
        busy = await self._aredis.mget(self._busy_keys(records)) if records else []
        found = _with_busy(records, busy)
        self._cached = (time.monotonic(), found)
        return found

    def _busy_keys(self, records: list[dict[str, Any]]) -> list[str]:
        return [self.keys.worker_busy(r["name"]) for r in records]


def _fresh(raws: Any) -> list[dict[str, Any]]:
    now = time.time()
    records = [json.loads(raw) for raw in raws]
    return [r for r in records if now - float(r.get("seen", 0)) <= ONLINE_WITHIN_S]


def _with_busy(records: list[dict[str, Any]], busy: Any) -> list[WorkerPublic]:
    found = [
        WorkerPublic.model_validate({**r, "busy_with": text(b) if b else None})
        for r, b in zip(records, busy, strict=True)
    ]
    return sorted(found, key=lambda w: w.name)
