"""The app runtime's settings, from ``FLEETCLOUD_APPS_*`` environment variables."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MEMORY_FLOOR_MB = 128
"""The smallest address-space cap a worker gets, whatever ``MemorySize`` says.

``RLIMIT_AS`` counts virtual memory, not what is resident: a worker that has imported the
SDK and opened its HTTP client maps about 50 MB before any app code runs (measured on
CPython 3.11, x86-64, with ``MALLOC_ARENA_MAX=1``). 128 MB — the seed's default
``MemorySize`` — leaves an app about 75 MB of its own."""


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "fleetcloud-apps"


class AppsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETCLOUD_APPS_", extra="ignore")

    api_url: str | None = Field(
        None, description="the data API URL apps are given (default: the server's own)"
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="where deployment packages are extracted (one directory per SHA-256)",
    )
    max_package_mb: int = Field(64, description="largest deployment package accepted")
    max_unpacked_mb: int = Field(256, description="largest package once extracted")
    retries: int = Field(2, ge=0, description="retries of a failed invocation")
    backoff_seconds: float = Field(1.0, ge=0, description="first retry delay (doubles)")
    backoff_max_seconds: float = Field(60.0, ge=0)
    max_workers: int = Field(8, ge=1, description="worker processes in all")
    per_version: int = Field(4, ge=1, description="concurrent invocations per app version")
    spare_workers: int = Field(1, ge=0, description="pre-started workers for cold starts")
    idle_seconds: float = Field(300.0, description="a worker unused this long is stopped")
    max_pending: int = Field(2000, ge=1, description="deliveries in hand before reading stops")
    lease_seconds: float = Field(60.0, gt=0, description="claim on a delivery, renewed")
    poll_seconds: float = Field(0.5, gt=0, description="how often the table is scanned")
    log_bytes: int = Field(16_384, ge=256, description="captured output kept per invocation")
    memory_floor_mb: int = Field(MEMORY_FLOOR_MB, ge=32)
    token_grace_seconds: float = Field(60.0, description="token lifetime past Timeout")
    token_reuse_seconds: float = Field(
        30.0, ge=0, description="an invocation token serves later invocations this long (0: never)"
    )
    retention_days: float = Field(7.0, description="invocation log and dead letters kept")
