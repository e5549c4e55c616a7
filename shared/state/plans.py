"""PlanCache: the memory planner's Redis state (shared/planning.py).

- the probe of each plan key (a model + data shape), as JSON, for PLAN_CACHE_TTL_S;
- an in-flight marker while a planner worker is asked to probe a key (PROBING once started);
- the ids of jobs accepted while their key was being probed (the waiting set);
- each owner's probe requests in the current minute (PLAN_PROBES_PER_MINUTE).

Probes are stored as text: the caller parses them (planning.ProbeResult)."""

from __future__ import annotations

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.state.keys import RedisKeys, text

PROBING = "probing"  # the in-flight marker's value once a planner worker started the probe


class PlanCache:
    def __init__(
        self, redis: Redis, prefix: str, ttl_s: float, aredis: AsyncRedis | None = None
    ) -> None:
        self.redis, self.keys, self.ttl_s = redis, RedisKeys(prefix), ttl_s
        self._aredis = aredis  # the API's submit path

    @property
    def aredis(self) -> AsyncRedis:
        assert self._aredis is not None, "PlanCache was made without an asyncio client"
        return self._aredis

    # --- probes

    def get(self, key: str) -> str | None:
        """The cached probe of `key` (JSON), if any."""
        raw = self.redis.get(self.keys.plan_cache(key))
        return None if raw is None else text(raw)

    async def aget(self, key: str) -> str | None:
        """get() on the asyncio client."""
        raw = await self.aredis.get(self.keys.plan_cache(key))
        return None if raw is None else text(raw)

    def put(self, key: str, probe_json: str) -> None:
        """Cache a probe for the cache's TTL (PLAN_CACHE_TTL_S)."""
        self.redis.set(self.keys.plan_cache(key), probe_json, ex=max(1, int(self.ttl_s)))

    # --- the in-flight marker

    async def aclaim(self, key: str, owner: str, ttl_s: int) -> bool:
        """Mark `key` as asked for (by `owner`) unless it already is; True if this call did."""
        return bool(await self.aredis.set(self.keys.plan_inflight(key), owner, nx=True, ex=ttl_s))

    async def arelease(self, key: str) -> None:
        await self.aredis.delete(self.keys.plan_inflight(key))

    def mark_probing(self, key: str) -> None:
        """A planner worker started the probe of `key` (submits may now wait for it)."""
        self.redis.set(self.keys.plan_inflight(key), PROBING, xx=True, keepttl=True)

    def release(self, key: str) -> None:
        self.redis.delete(self.keys.plan_inflight(key))

    async def ais_probing(self, key: str) -> bool:
        return await self.aredis.get(self.keys.plan_inflight(key)) == PROBING.encode()

    # --- rate and backlog

    async def acount_request(self, owner: str) -> tuple[int, int]:
        """Count one probe request of `owner` in a fixed one-minute window from its first;
        returns (requests in the window, seconds until it ends)."""
        rate = self.keys.plan_rate(owner)
        pipe = self.aredis.pipeline(transaction=False)
        pipe.set(rate, 0, nx=True, ex=60)
        pipe.incr(rate)
        pipe.ttl(rate)
        _, count, left = await pipe.execute()
        return int(count), max(1, int(left))

    async def abacklog(self, queue: str) -> int:
        """Probe requests no planner slot has taken yet (the broker queue's length)."""
        return int(await self.aredis.llen(queue))

    # --- jobs waiting for a probe

    async def add_waiting(self, key: str, job_id: str, ttl_s: int) -> None:
        """Put `job_id` on `key`'s waiting set (kept `ttl_s`)."""
        waiting = self.keys.plan_waiting(key)
        pipe = self.aredis.pipeline(transaction=False)
        pipe.sadd(waiting, job_id)
        pipe.expire(waiting, ttl_s)
        await pipe.execute()

    def waiting(self, key: str) -> list[str]:
        return [text(i) for i in self.redis.smembers(self.keys.plan_waiting(key))]

    def done_waiting(self, key: str, job_ids: list[str]) -> None:
        if job_ids:
            self.redis.srem(self.keys.plan_waiting(key), *job_ids)
