"""One Settings class for every process; values come from TRAINYARD_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "trainyard-dev-secret"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRAINYARD_",
        # `make up` writes the local stack's addresses here, so a CLI or worker started by hand
        # in the repository finds the stack without exporting anything.
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
    PRESIGN_EXPIRY_S: int = Field(900, ge=1, le=7 * 24 * 3600)

    # API process.
    API_HOST: str = "127.0.0.1"
    API_PORT: int = 8000
    API_URL: str = "http://127.0.0.1:8000"
    PAGE_SIZE_MAX: int = 200
    UPLOAD_MAX_BYTES: int = Field(512 * 2**20, ge=1, description="Largest data set upload")

    # Celery.
    QUEUE: str = "trainyard"
    # The longest a job may run; the broker's visibility timeout is set above it so Redis
    # does not redeliver a task that is still training.
    JOB_TIME_LIMIT_S: int = Field(24 * 3600, ge=60)

    # Worker-side: where data sets are cached on local disk.
    DATA_DIR: str = ".trainyard/data"

    @property
    def visibility_timeout_s(self) -> int:
        return self.JOB_TIME_LIMIT_S + 3600

    @model_validator(mode="after")
    def _no_default_secrets_outside_local(self) -> Settings:
        if self.ENVIRONMENT != "local" and self.S3_SECRET_KEY == DEV_SECRET:
            raise ValueError("TRAINYARD_S3_SECRET_KEY must be set outside local development")
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
