"""Per-job event streams on Redis Streams: publish, read the history, tail live."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from redis import Redis

from shared.jobs import RedisKeys
from shared.schemas import JobEvent

# Stream entries carry one field: the event as JSON. Streams are capped so a job that logs
# every step for days cannot fill Redis (which runs with noeviction).
_FIELD = "e"
MAX_EVENTS = 100_000


class EventStream:
    """Read and write the event streams of jobs."""

    def __init__(self, redis: Redis, prefix: str = "trainyard") -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)

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
        return [_decode(entry_id, fields) for entry_id, fields in entries]

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
                event = _decode(entry_id, fields)
                last = event.id or last
                yield event


def _decode(entry_id: bytes | str, fields: dict[bytes | str, bytes | str]) -> JobEvent:
    raw = fields.get(_FIELD) or fields.get(_FIELD.encode())
    event = JobEvent.model_validate_json(raw or b"{}")
    event.id = _text(entry_id)
    return event


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
