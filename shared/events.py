"""Per-job event streams on Redis Streams: publish, read the history, tail live."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from redis import Redis

from shared.jobs import Lease, LeaseLost, RedisKeys
from shared.schemas import JobEvent

# Stream entries carry one field: the event as JSON. Streams are capped so a job that logs
# every step for days cannot fill Redis (which runs with noeviction).
_FIELD = "e"
MAX_EVENTS = 100_000

# Append events and update the job's progress fields only while the caller holds the lease.
# KEYS: stream, lease, job. ARGV: token, maxlen, n_events, payloads..., field, value, ...
_FENCED_PUBLISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local n = tonumber(ARGV[3])
local ids = {}
for i = 4, 3 + n do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i])
end
if #ARGV > 3 + n then
  local fields = {}
  for i = 4 + n, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[3], unpack(fields))
end
return ids
"""


class EventStream:
    """Read and write the event streams of jobs."""

    def __init__(self, redis: Redis, prefix: str = "trainyard") -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)
        self._fenced = redis.register_script(_FENCED_PUBLISH)

    def publish_fenced(
        self, lease: Lease, events: list[JobEvent], progress: dict[str, str] | None = None
    ) -> list[str]:
        """Append events (and set progress fields on the job) only while `lease` is held;
        LeaseLost otherwise. One round trip."""
        k, job_id = self.keys, lease.job_id
        flat = [x for item in (progress or {}).items() for x in item]
        payloads = [e.model_dump_json(exclude={"id"}) for e in events]
        ids = self._fenced(
            keys=[k.events(job_id), k.lease(job_id), k.job(job_id)],
            args=[lease.token, MAX_EVENTS, len(payloads), *payloads, *flat],
        )
        if ids is None:
            raise LeaseLost(f"job {job_id}: lease {lease.token} is no longer held")
        return [_text(i) for i in ids]

    def publish(self, job_id: str, events: Iterable[JobEvent]) -> list[str]:
        """Append events in one round trip; returns their stream ids."""
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            payload = event.model_dump_json(exclude={"id"})
            pipe.xadd(
                self.keys.events(job_id), {_FIELD: payload}, maxlen=MAX_EVENTS, approximate=True
            )
        return [_text(i) for i in pipe.execute()]

    def read(
        self, job_id: str, after: str | None = None, count: int | None = None
    ) -> list[JobEvent]:
        """The stream's history, oldest first, strictly after stream id `after` if given."""
        start = f"({after}" if after else "-"
        key = self.keys.events(job_id)
        entries: Any = self.redis.xrange(key, min=start, max="+", count=count)
        return [decode_entry(entry_id, fields) for entry_id, fields in entries]

    def tail(
        self, job_id: str, after: str = "0-0", block_ms: int = 1000
    ) -> Iterator[JobEvent | None]:
        """Yield events after `after` as they arrive; yields None after each idle `block_ms`."""
        last = after
        while True:
            reply: Any = self.redis.xread(
                {self.keys.events(job_id): last}, block=block_ms, count=500
            )
            if not reply:
                yield None
                continue
            for entry_id, fields in reply[0][1]:
                event = decode_entry(entry_id, fields)
                last = event.id or last
                yield event


def decode_entry(entry_id: bytes | str, fields: dict[bytes | str, bytes | str]) -> JobEvent:
    raw = fields.get(_FIELD) or fields.get(_FIELD.encode())
    event = JobEvent.model_validate_json(raw or b"{}")
    event.id = _text(entry_id)
    return event


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
