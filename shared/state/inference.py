"""InferenceRequests: samples and predict requests on their way to the inference worker, and
their answers (README, "Using a trained model").

- each request is one hash (`RedisKeys.inference`): who asked (owner), about which job, what
  (kind, params as JSON) and, once the worker has answered, the answer (JSON); it expires
  INFERENCE_RESULT_TTL_S after it was made, and again that long after it was answered;
- a predict request's images travel beside it as raw bytes (`RedisKeys.inference_input`)
  with the same TTL, deleted with the answer: at most PREDICT_DECODED_MAX_BYTES (and at most
  INFERENCE_MAX_IMAGES images of the job's shape). A worker that dies mid-request leaves them
  for its redelivery (Celery acks_late), never beyond the TTL.

A request is answered once: the first answer stored wins (HSETNX), whether the worker's or
the API's 504 for a request no worker answered within INFERENCE_TIMEOUT_S of `queued_at`; a
redelivered or late worker finds it answered and does nothing.

The API writes requests and reads answers (asyncio client); the worker reads requests and
writes answers (the blocking client)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.state.keys import RedisKeys

REQUEST_ID = r"^[0-9a-f]{32}$"
InferenceKind = Literal["samples", "predict"]


def new_request_id() -> str:
    return uuid.uuid4().hex


class InferenceRequest(BaseModel):
    """What the inference worker needs to answer one request, without reading the job.
    `queued_at`: when the API stored it (Unix time, seconds), for INFERENCE_TIMEOUT_S."""

    id: str
    owner: str
    job_id: str
    kind: InferenceKind
    params: dict[str, Any] = Field(default_factory=dict)
    queued_at: float = Field(default_factory=time.time)


class InferenceAnswer(BaseModel):
    """The worker's answer: `status` 200 with `result` (the worker's part of the public body:
    object keys, not URLs), or an error status with its message and the field at fault."""

    status: int
    result: dict[str, Any] | None = None
    message: str | None = None
    field: str | None = None


class InferenceRequests:
    def __init__(
        self, redis: Redis, prefix: str, ttl_s: int, aredis: AsyncRedis | None = None
    ) -> None:
        self.redis, self.keys, self.ttl_s = redis, RedisKeys(prefix), max(1, int(ttl_s))
        self._aredis = aredis  # the API's side

    @property
    def aredis(self) -> AsyncRedis:
        assert self._aredis is not None, "InferenceRequests was made without an asyncio client"
        return self._aredis

    # --- the API's side

    async def acreate(self, request: InferenceRequest, images: bytes | None = None) -> None:
        """Store `request` (and a predict request's image bytes), both expiring after the TTL."""
        pipe = self.aredis.pipeline(transaction=True)
        key = self.keys.inference(request.id)
        pipe.hset(key, "request", request.model_dump_json())
        pipe.expire(key, self.ttl_s)
        if images is not None:
            pipe.set(self.keys.inference_input(request.id), images, ex=self.ttl_s)
        await pipe.execute()

    async def aget(self, request_id: str) -> tuple[InferenceRequest, InferenceAnswer | None] | None:
        """The request and its answer (None while pending); None when unknown or expired."""
        raw_request, raw_answer = await self.aredis.hmget(
            self.keys.inference(request_id), ["request", "answer"]
        )
        if raw_request is None:
            return None
        answer = None if raw_answer is None else InferenceAnswer.model_validate_json(raw_answer)
        return InferenceRequest.model_validate_json(raw_request), answer

    async def aanswer(self, request_id: str) -> InferenceAnswer | None:
        """The answer, once given."""
        raw = await self.aredis.hget(self.keys.inference(request_id), "answer")
        return None if raw is None else InferenceAnswer.model_validate_json(raw)

    async def atime_out(self, request_id: str, answer: InferenceAnswer) -> InferenceAnswer | None:
        """Answer a request nobody answered in time with `answer` (the API's 504) and drop its
        input, unless it was answered meanwhile: the answer that stands, None when the
        request expired."""
        key = self.keys.inference(request_id)
        pipe = self.aredis.pipeline(transaction=True)
        pipe.exists(key)
        pipe.hsetnx(key, "answer", answer.model_dump_json())
        pipe.expire(key, self.ttl_s)
        pipe.delete(self.keys.inference_input(request_id))
        existed, stored, _, _ = await pipe.execute()
        if not existed:  # expired meanwhile: HSETNX made a hash of the answer alone
            await self.aredis.delete(key)
            return None
        return answer if stored else await self.aanswer(request_id)

    async def adrop(self, request_id: str) -> None:
        """Forget a request that was never queued (its message could not be sent)."""
        await self.aredis.delete(
            self.keys.inference(request_id), self.keys.inference_input(request_id)
        )

    # --- the worker's side

    def get(self, request_id: str) -> InferenceRequest | None:
        """The request, or None when it expired (or was never made)."""
        raw = self.redis.hget(self.keys.inference(request_id), "request")
        return None if raw is None else InferenceRequest.model_validate_json(raw)

    def answered(self, request_id: str) -> bool:
        """Whether an answer is stored already (a redelivered message: nothing to do)."""
        return bool(self.redis.hexists(self.keys.inference(request_id), "answer"))

    def read_input(self, request_id: str) -> bytes | None:
        """A predict request's image bytes; None when expired. They stay until the answer is
        stored (a redelivery after a worker died mid-request reads them again)."""
        raw = self.redis.get(self.keys.inference_input(request_id))
        return raw if isinstance(raw, bytes) else None  # a bytes client: never str

    def answer(self, request_id: str, answer: InferenceAnswer) -> bool:
        """Store the answer, kept the TTL from now, and drop the input; False (nothing changed)
        when the request was answered already (a redelivery, or the API's 504) or expired
        meanwhile (its poll URL stays a 404)."""
        key = self.keys.inference(request_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hexists(key, "request")
        pipe.hsetnx(key, "answer", answer.model_dump_json())
        pipe.expire(key, self.ttl_s)
        pipe.delete(self.keys.inference_input(request_id))
        existed, stored, _, _ = pipe.execute()
        if not existed:
            self.redis.delete(key)
        return bool(existed and stored)
