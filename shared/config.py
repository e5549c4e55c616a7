"""One Settings class for every process; values come from TRAINYARD_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

DEV_SECRET = "trainyard-dev-secret"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRAINYARD_",
        # `make up` writes the local stack's addresses here, so a worker started by hand in
        # the repository finds the stack without exporting anything (the CLI and SDK read the
        # file themselves: trainyard/client.py).
        env_file=".trainyard/stack.env",
        extra="ignore",
    )

    ENVIRONMENT: Literal["local", "staging", "production"] = "local"

    # Redis: job registry, event streams, Celery broker.
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    KEY_PREFIX: str = "trainyard"

    # S3-compatible object storage (MinIO in production, SeaweedFS locally).
    S3_ENDPOINT: str = "127.0.0.1:9000"
    # Address clients outside the cluster use for presigned URLs; defaults to S3_ENDPOINT.
    S3_PUBLIC_ENDPOINT: str | None = None
    S3_ACCESS_KEY: str = "trainyard"
    S3_SECRET_KEY: str = DEV_SECRET
    S3_BUCKET: str = Field("trainyard", min_length=3)
    S3_SECURE: bool = False
    S3_REGION: str = "us-east-1"
    PRESIGN_EXPIRY_S: int = Field(900, ge=1, le=900, description="Presigned URL lifetime")

    # API process.
    API_HOST: str = "127.0.0.1"
    API_PORT: int = 8000
    API_URL: str = "http://127.0.0.1:8000"
    PAGE_SIZE_MAX: int = 200
    # Bearer tokens: "owner:token[:admin]" entries, comma-separated, and/or a file of
    # "owner:sha256hex[:admin]" lines. API_URL and API_TOKEN are the client's: the SDK and CLI
    # read TRAINYARD_API_URL/TRAINYARD_API_TOKEN themselves (trainyard/client.py), not Settings.
    API_TOKENS: str = ""
    API_TOKENS_FILE: str | None = None
    API_TOKEN: str | None = None
    JSON_BODY_MAX_BYTES: int = Field(64 * 1024, ge=1024)
    MAX_QUEUED_PER_OWNER: int = Field(100, ge=1)
    IDEMPOTENCY_TTL_S: int = Field(24 * 3600, ge=60)
    SSE_PING_S: float = Field(15.0, gt=0)
    UPLOAD_MAX_BYTES: int = Field(256 * 2**20, ge=1, description="Largest data set upload")

    # Celery.
    QUEUE: str = "trainyard"
    # The longest a job may run; the broker's visibility timeout is set above it so Redis
    # does not redeliver a task that is still training.
    JOB_TIME_LIMIT_S: int = Field(24 * 3600, ge=60)
    # Override of that visibility timeout (tests shorten it to provoke redeliveries).
    VISIBILITY_TIMEOUT_S: int | None = Field(None, ge=1)

    # Reliability (docs/design.md): a running job holds a lease the worker renews every TTL/3;
    # the reconciler requeues running jobs whose lease expired and queued jobs whose broker
    # message is gone.
    LEASE_TTL_S: float = Field(30.0, gt=0)
    RECONCILE_INTERVAL_S: float = Field(15.0, gt=0)
    RECONCILE_GRACE_S: float = Field(30.0, ge=0)
    MAX_ATTEMPTS: int = Field(5, ge=1, description="Starts that may end in a crash")
    # After SIGTERM a running job checkpoints at its next step and is requeued within this
    # window; Kubernetes' terminationGracePeriodSeconds must be longer.
    SHUTDOWN_GRACE_S: float = Field(120.0, gt=0)
    WORKER_HEARTBEAT_FILE: str = "/tmp/trainyard-worker-heartbeat"
    # How long object storage calls are retried (with backoff) before a job fails.
    S3_RETRY_S: float = Field(60.0, ge=0)
    # Memory planning: classes of workers by memory ("name:GiB", names starting with "cpu" are
    # host memory), what share of a class a job may plan to use, how long a submit waits for
    # the planner, and (worker side) this worker's role and class (detected when unset).
    MEMORY_CLASSES: str = "cpu:16"
    MEMORY_HEADROOM: float = Field(0.9, gt=0, le=1)
    PLAN_TIMEOUT_S: float = Field(
        300.0, ge=0, description="A job waits this long for its probe, then runs unplanned; 0: off"
    )
    # A submit answers fast whatever the planner is doing (README, "Memory planning"): it waits
    # at most PLAN_WAIT_S for a new shape's probe, then the job is accepted `queued`, being
    # planned; probes are cached PLAN_CACHE_TTL_S and limited per owner (in Redis).
    PLAN_WAIT_S: float = Field(
        1.0, ge=0, description="How long a submit waits for a probe before answering"
    )
    PLAN_CACHE_TTL_S: int = Field(7 * 86400, ge=60, description="Lifetime of a cached probe")
    PLAN_PROBES_PER_MINUTE: int = Field(
        20, ge=1, description="New probes one owner may cause per minute (429 past it)"
    )
    WORKER_ROLE: Literal["trainer", "planner", "inference"] = "trainer"
    WORKER_MEMORY_CLASS: str | None = None
    # Test-only: lets tests inject crashes and OOMs into a job (never enable in production).
    FAULT_INJECTION: bool = False
    # Sweeps: a worker that takes a trial also claims queued trials of the same sweep and pack
    # key (shared/packing.py) and trains them as one fused pack (workers/trainer/pack.py): at
    # most this many, and only as many as the memory planner predicts fit this worker.
    PACK_MAX_TRIALS: int = Field(16, ge=1, le=256, description="Most trials trained as one pack")
    # How a pack steps (docs/packing.md): "fused" (one vmapped model array, one stacked Adam),
    # "loop" (each trial's own step in turn, exactly solo), or "auto": the first steps of each
    # set of trials time both and the faster is kept (fused wins on a GPU and at small batches
    # on a CPU; bench/pack.py).
    PACK_EXECUTOR: Literal["auto", "fused", "loop"] = "auto"
    # A worker that takes a trial while its sweep is still queueing the others (the sweep's
    # lock is held) waits up to this long before it claims, so a wave packs whole.
    PACK_GATHER_S: float = Field(
        2.0, ge=0, le=60, description="How long a trial waits for its siblings to be queued"
    )
    # Sweeps (docs/sweeps.md): the most trials one sweep may ask for (POST /v1/sweeps' n_trials).
    SWEEP_MAX_TRIALS: int = Field(
        256, ge=1, le=10_000, description="Most trials in one sweep (n_trials past it: a 422)"
    )
    # Sweeps one owner may have running at once (POST /v1/sweeps past it: a 429).
    SWEEP_MAX_RUNNING_PER_OWNER: int = Field(
        10, ge=1, le=10_000, description="Running sweeps per owner (one more: a 429)"
    )

    # Worker CPU sizing (workers/trainer/cpu.py): cores this worker may use, shared by its
    # Celery pool processes; unset: the cgroup CPU limit, else the CPUs it may run on.
    WORKER_CPUS: float | None = Field(
        None, gt=0, description="Cores a worker (or planner) may use; unset: detected"
    )

    # Worker-side: where data sets are cached on local disk.
    DATA_DIR: str = ".trainyard/data"

    # Data set uploads and the worker's data set cache (README, "Data sets"). Untrusted input
    # may not use memory out of proportion to these: an upload holds its body (at most
    # UPLOAD_MAX_BYTES) and about 2 x UPLOAD_DECODED_MAX_BYTES (pixels, stored npz), and at
    # most UPLOAD_PARSE_CONCURRENCY are read and parsed at once.
    UPLOAD_DECODED_MAX_BYTES: int = Field(
        256 * 2**20, ge=1, description="Largest decoded (pixel) size of one upload, bytes"
    )
    UPLOAD_PARSE_CONCURRENCY: int = Field(
        2, ge=1, description="Uploads read and parsed at once per API process"
    )
    UPLOAD_PARSE_WAIT_S: float = Field(
        2.0, ge=0, description="How long an upload waits for a parse slot before a 503"
    )
    DATASETS_MAX_PER_OWNER: int = Field(100, ge=1, description="Uploaded data sets per owner")
    DATASETS_MAX_BYTES_PER_OWNER: int = Field(
        4 * 2**30, ge=1, description="Stored (compressed npz) bytes of one owner's data sets"
    )
    WORKER_DATASET_CACHE_BYTES: int = Field(
        2 * 2**30, ge=0, description="Decoded data sets a worker keeps in memory (LRU), bytes"
    )

    # Inference (README, "Using a trained model"): samples and predictions are answered by the
    # inference worker (WORKER_ROLE=inference, queue "{QUEUE}-inference"), never by a trainer.
    INFERENCE_WAIT_S: float = Field(
        5.0, ge=0, description="How long a samples/predict request waits before a 202 to poll"
    )
    INFERENCE_RESULT_TTL_S: int = Field(
        600, ge=10, description="How long a request's answer (and its input) is kept in Redis"
    )
    INFERENCE_CACHE_BYTES: int = Field(
        512 * 2**20, ge=0, description="Models the inference worker keeps loaded (LRU), bytes"
    )
    INFERENCE_MAX_IMAGES: int = Field(
        1024, ge=1, le=1024, description="Images in one samples request or predict batch"
    )
    PREDICT_MAX_BYTES: int = Field(
        32 * 2**20, ge=1024, description="Largest predict request body (413 past it)"
    )
    PREDICT_DECODED_MAX_BYTES: int = Field(
        64 * 2**20,
        ge=1,
        description="Largest decoded size of one predict input (N x C x H x W bytes, read from "
        "the .npy or image header before decoding; 413 past it): what it may hold in Redis",
    )
    PREDICT_PARSE_CONCURRENCY: int = Field(
        4,
        ge=1,
        description="Predict bodies read and decoded at once per API process; one more waits "
        "UPLOAD_PARSE_WAIT_S for a slot, then is a 503 with Retry-After",
    )
    INFERENCE_TIMEOUT_S: float = Field(
        120.0,
        gt=0,
        description="A samples/predict request no inference worker has answered this long "
        "after it was queued is a 504 (on the request's wait and on its poll URL)",
    )

    # GAN sample quality and training health (docs/quality.md).
    QUALITY: bool = Field(True, description="Score GAN samples every sample_every steps")
    QUALITY_SAMPLES: int = Field(
        1000, ge=2, le=50_000, description="Generated (and real test) images per quality score"
    )
    QUALITY_MIN_TEST: int = Field(
        100, ge=2, description="Fewer test images than this: quality is skipped, with the reason"
    )
    QUALITY_INCEPTION_KEY: str = Field(
        "models/inception/weights-inception-2015-12-05-6726825d.pth",
        description="Object key of the FID Inception-v3 weights (unlabelled data sets)",
    )
    QUALITY_INCEPTION_DOWNLOAD: bool = Field(
        False,
        description="Let a worker download the Inception-v3 weights (and store them at "
        "QUALITY_INCEPTION_KEY) when the object store has none; off: FID is skipped",
    )
    HEALTH_SATURATION_D_FAKE: float = Field(
        1e-3, gt=0, lt=1, description="D(G(z)) at or below this counts as D winning outright"
    )
    HEALTH_SATURATION_G_LOSS: float = Field(
        50.0, gt=0, description="...with G's loss at or above this (BCE clamps it at 100)"
    )
    HEALTH_SATURATION_LOGS: int = Field(
        10, ge=1, description="Consecutive logged steps of both before the warning"
    )
    HEALTH_COLLAPSE_RATIO: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Mode collapse: the fixed-seed samples' mean pairwise distance below this "
        "share of the real test images' mean pairwise distance",
    )
    HEALTH_CHANCE_EPOCHS: int = Field(
        3, ge=1, description="A classifier is judged against chance after this many epochs"
    )
    HEALTH_CHANCE_MARGIN: float = Field(
        0.05, ge=0, le=1, description="...stuck when test accuracy <= 1/classes + this"
    )

    @property
    def visibility_timeout_s(self) -> int:
        return self.VISIBILITY_TIMEOUT_S or self.JOB_TIME_LIMIT_S + 3600

    @model_validator(mode="after")
    def _no_default_secrets_outside_local(self) -> Settings:
        if self.ENVIRONMENT != "local" and self.S3_SECRET_KEY == DEV_SECRET:
            raise ValueError("TRAINYARD_S3_SECRET_KEY must be set outside local development")
        if self.ENVIRONMENT == "production" and self.FAULT_INJECTION:
            raise ValueError("TRAINYARD_FAULT_INJECTION is for tests, never production")
        if self.INFERENCE_TIMEOUT_S >= self.INFERENCE_RESULT_TTL_S:
            raise ValueError(
                f"TRAINYARD_INFERENCE_TIMEOUT_S ({self.INFERENCE_TIMEOUT_S:g}) must be below "
                f"TRAINYARD_INFERENCE_RESULT_TTL_S ({self.INFERENCE_RESULT_TTL_S}): a request "
                "would expire (404) before it could time out (504)"
            )
        if self.PACK_GATHER_S >= self.LEASE_TTL_S / 3:
            raise ValueError(
                f"TRAINYARD_PACK_GATHER_S ({self.PACK_GATHER_S:g}) must be below a third of "
                f"TRAINYARD_LEASE_TTL_S ({self.LEASE_TTL_S:g}): a trial's lease is not renewed "
                "while its worker gathers the pack"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


_CLIENT_OPTIONS = {
    "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
    "health_check_interval": 15,
}


def connect_redis(settings: Settings) -> Redis:
    """A Redis client that rides out a restart: commands retry with backoff for ~30 s."""
    return Redis.from_url(
        settings.REDIS_URL,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=30),
        **_CLIENT_OPTIONS,
    )


def connect_async_redis(settings: Settings) -> AsyncRedis:
    """The asyncio twin of connect_redis, for the API's hot paths and SSE (same retries)."""
    return AsyncRedis.from_url(
        settings.REDIS_URL,
        retry=AsyncRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=30),
        **_CLIENT_OPTIONS,  # type: ignore[arg-type]
    )
