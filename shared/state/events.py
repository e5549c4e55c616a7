"""Per-job event streams on Redis Streams: publish, read the history, tail live.

A restarted job repeats what its last attempt logged after the checkpoint it resumes from.
The new attempt writes a `rewind` event (to that step, with its attempt) before anything
else, and `KeptHistory` turns the stream into the history that was kept: /metrics returns it,
and SSE replays it before following live events (clients apply live rewinds themselves)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.schemas import JobEvent
from shared.state import scripts
from shared.state.keys import RedisKeys, text
from shared.state.leases import Lease, LeaseLost
from shared.state.records import MAX_EVENTS
from shared.status import TERMINAL

_FIELD = "e"  # stream entries carry one field: the event as JSON


class EventStream:
    """Read and write the event streams of jobs."""

    def __init__(
        self, redis: Redis, prefix: str = "trainyard", aredis: AsyncRedis | None = None
    ) -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)
        self._aredis = aredis  # follow() reads with it
        self._fenced = redis.register_script(scripts.FENCED_PUBLISH)

    def publish_fenced(
        self, lease: Lease, events: list[JobEvent], progress: dict[str, str] | None = None
    ) -> list[str]:
        """Append events (and set progress fields on the job) only while `lease` is held;
        LeaseLost otherwise. One round trip. Not `status` events: ValueError (a status event
        is written with its status change, by JobRegistry)."""
        _no_status_events(events)
        k, job_id = self.keys, lease.job_id
        flat = [x for item in (progress or {}).items() for x in item]
        payloads = [e.model_dump_json(exclude={"id"}) for e in events]
        ids = self._fenced(
            keys=[k.events(job_id), k.lease(job_id), k.job(job_id)],
            args=[lease.token, MAX_EVENTS, len(payloads), *payloads, *flat],
        )
        if ids is None:
            raise LeaseLost(f"job {job_id}: lease {lease.token} is no longer held")
        return [text(i) for i in ids]

    def publish(self, job_id: str, events: list[JobEvent]) -> list[str]:
        """Append events in one round trip, unfenced (tests, and tools that replay a stream);
        returns their stream ids. Not `status` events: ValueError."""
        _no_status_events(events)
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            payload = event.model_dump_json(exclude={"id"})
            pipe.xadd(
                self.keys.events(job_id), {_FIELD: payload}, maxlen=MAX_EVENTS, approximate=True
            )
        return [text(i) for i in pipe.execute()]

    def read(
        self, job_id: str, after: str | None = None, count: int | None = None
    ) -> list[JobEvent]:
        """The stream's history, oldest first, strictly after stream id `after` if given."""
        start = f"({after}" if after else "-"
        key = self.keys.events(job_id)
        entries: Any = self.redis.xrange(key, min=start, max="+", count=count)
        return [decode_entry(entry_id, fields) for entry_id, fields in entries]

    def history(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """read(), reconciled: each step's events once, from the attempt that was kept (the
        rewind events stay, so a reader that had events up to `after` can drop its own)."""
        return KeptHistory().keep(self.read(job_id, after=after))

    async def follow(
        self, job_id: str, after: str | None = None, block_ms: int = 1000
    ) -> AsyncIterator[JobEvent | None]:
        """The job's events after stream id `after` (from the start if None) as they arrive,
        as SSE sends them: the history so far as history() keeps it, then live events except
        late writes of a replaced attempt (a `rewind` tells the reader to drop what it holds
        past its step). Yields None after each idle `block_ms`, so the caller can stop; ends
        after the job's terminal status event, or once the job is finished and nothing is
        left to read (a stream capped past its status event)."""
        assert self._aredis is not None, "EventStream was made without an asyncio client"
        key, last = self.keys.events(job_id), after or "0-0"
        kept = await ascan(self._aredis, key, after=last)
        while True:
            reply: Any = await self._aredis.xread({key: last}, block=block_ms, count=200)
            if not reply:
                if await self._finished_and_drained(job_id, last):
                    return
                yield None
                continue
            for entry_id, fields in reply[0][1]:
                event = decode_entry(entry_id, fields)
                last = event.id or last
                if kept.passes(event):
                    yield event
                    if is_terminal(event):
                        return

    async def _finished_and_drained(self, job_id: str, last: str) -> bool:
        assert self._aredis is not None
        state = await self._aredis.hget(self.keys.job(job_id), "status")
        if state is None or text(state) not in TERMINAL:
            return False
        newer = await self._aredis.xrange(
            self.keys.events(job_id), min=f"({last}", max="+", count=1
        )
        return not newer


def _no_status_events(events: list[JobEvent]) -> None:
    if any(e.kind == "status" for e in events):
        raise ValueError("a status event is written with its status change (JobRegistry)")


def is_terminal(event: JobEvent) -> bool:
    """A status event that ends the job (succeeded, failed, cancelled, pruned)."""
    return event.kind == "status" and event.info.get("status") in TERMINAL


# Kinds a restarted attempt writes again for the same steps. Status, log and rewind events
# tell what happened to each attempt and are all kept.
REPLAYED_KINDS = frozenset({"step", "epoch", "checkpoint", "sample", "quality", "memory"})


class KeptHistory:
    """Decides, reading a job's events in stream order, which ones the kept history holds:

    - a `rewind` to step N supersedes every earlier event of a replayed kind past step N;
    - an event of a replayed kind from an attempt older than the newest rewind's came late
      (a worker that had lost the job) and is superseded at once;
    - of two events of one replayed kind at one step, the newer wins (the final sample grid
      and memory event of a job that was restarted after its last checkpoint).

    add() is for a history (it remembers one id per kind and step); live() for events that
    are sent as they arrive, where the client applies rewinds itself."""

    def __init__(self) -> None:
        self.attempt = 0  # of the newest rewind seen
        self.dropped: set[str] = set()  # ids (or positions) of superseded events
        self._kept: dict[tuple[str, int], str] = {}
        self._seen = 0
        self.read_to = "0-0"  # the last stream id ascan() read

    def add(self, event: JobEvent) -> bool:
        """Take the stream's next event; False if it is superseded already."""
        key = event.id if event.id is not None else f"#{self._seen}"
        self._seen += 1
        if not self.live(event):
            self.dropped.add(key)
            return False
        if event.kind == "rewind":
            for kind_step in [k for k in self._kept if k[1] > event.step]:
                self.dropped.add(self._kept.pop(kind_step))
        elif event.kind in REPLAYED_KINDS:
            previous = self._kept.get((event.kind, event.step))
            if previous is not None:
                self.dropped.add(previous)
            self._kept[(event.kind, event.step)] = key
        return True

    def live(self, event: JobEvent) -> bool:
        """Take an event as it arrives; False if it is a late write of a replaced attempt."""
        if event.kind == "rewind":
            self.attempt = max(self.attempt, event.attempt)
            return True
        return event.kind not in REPLAYED_KINDS or event.attempt >= self.attempt

    def keep(self, events: list[JobEvent]) -> list[JobEvent]:
        """The kept ones of `events`, a stretch of one stream in order (add()s them first)."""
        start = self._seen
        for event in events:
            self.add(event)
        return [
            e
            for n, e in enumerate(events, start)
            if (e.id if e.id is not None else f"#{n}") not in self.dropped
        ]

    def passes(self, event: JobEvent) -> bool:
        """For a follower, after ascan(): an event of the history read is sent unless it was
        superseded; a newer one unless it is a late write (live())."""
        if event.id is not None and _stream_id(event.id) <= _stream_id(self.read_to):
            return event.id not in self.dropped
        return self.live(event)


async def ascan(aredis: AsyncRedis, key: str, after: str = "0-0", page: int = 1000) -> KeptHistory:
    """Read stream `key` after id `after` to its current end, `page` entries at a time, into a
    KeptHistory that then tells a follower which events to send (passes()). Holds one id per
    replayed kind and step while it reads, then only the superseded ids."""
    history = KeptHistory()
    history.read_to = after
    while True:
        start = f"({history.read_to}" if history.read_to != "0-0" else "-"
        entries: Any = await aredis.xrange(key, min=start, max="+", count=page)
        for entry_id, fields in entries:
            event = decode_entry(entry_id, fields)
            history.add(event)
            history.read_to = event.id or history.read_to
        if len(entries) < page:
            history._kept.clear()  # live() needs none of it
            return history


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def decode_entry(entry_id: bytes | str, fields: dict[bytes | str, bytes | str]) -> JobEvent:
    raw = fields.get(_FIELD) or fields.get(_FIELD.encode())
    event = JobEvent.model_validate_json(raw or b"{}")
    event.id = text(entry_id)
    return event
