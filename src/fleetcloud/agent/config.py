"""The agent's settings, read from environment variables (the seed's names first).

``AgentConfig.from_env`` is a pure function of a mapping, so every rule here can be
tested without touching the process environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fleetcloud.core.errors import ConfigError

T = TypeVar("T")

DEFAULT_POLLING_INTERVAL_MS = 30_000
DEFAULT_LOCAL_API_PORT = 48484
DEFAULT_DATA_DIR = "~/.fleetcloud-agent"
JOBS_API_SUFFIX = "/api/v1"

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``fleetcloud agent`` needs to know; see docs/agent.md for the table."""

    data_dir: Path
    enable_cloud_jobs: bool = False
    enable_job_engine: bool = False
    cloud_api_url: str | None = None
    server_url: str | None = None
    polling_interval_ms: int = DEFAULT_POLLING_INTERVAL_MS
    long_poll_seconds: float = 30.0
    debug: bool = False
    device_uuid: str | None = None
    device_api_key: str | None = None
    provisioning_key: str | None = None
    device_name: str | None = None
    handler_dir_override: Path | None = None
    local_api: bool = True
    local_api_port: int = DEFAULT_LOCAL_API_PORT
    grace_seconds: float = 30.0
    kill_seconds: float = 5.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    status_retries: int = 3
    output_cap_bytes: int = 10 * 1024
    queue_max_messages: int = 10_000
    queue_max_bytes: int = 64 * 1024 * 1024
    history_limit: int = 200
    log_format: str = "text"

    @property
    def handler_dir(self) -> Path:
        return self.handler_dir_override or self.data_dir / "handlers"

    @property
    def polling_interval(self) -> float:
        """The polling interval in seconds."""
        return self.polling_interval_ms / 1000

    @property
    def jobs_enabled(self) -> bool:
        """Cloud jobs run only when both switches are on (the seed's rule)."""
        return self.enable_cloud_jobs and self.enable_job_engine

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentConfig:
        """Read the settings from ``env`` (the process environment by default)."""
        env = os.environ if env is None else env
        read = _Reader(env)
        cloud_api_url = read.text("CLOUD_API_URL")
        cloud_api_url = cloud_api_url.rstrip("/") if cloud_api_url else None
        config = cls(
            data_dir=Path(read.text("FLEETCLOUD_AGENT_DATA") or DEFAULT_DATA_DIR).expanduser(),
            enable_cloud_jobs=read.flag("ENABLE_CLOUD_JOBS", False),
            enable_job_engine=read.flag("ENABLE_JOB_ENGINE", False),
            cloud_api_url=cloud_api_url,
            server_url=server_url(read.text("FLEETCLOUD_URL"), cloud_api_url),
            polling_interval_ms=read.number(
                "CLOUD_JOBS_POLLING_INTERVAL", int, DEFAULT_POLLING_INTERVAL_MS, low=10
            ),
            long_poll_seconds=read.number("CLOUD_JOBS_LONG_POLL", float, 30.0, low=0),
            debug=read.flag("DEBUG", False),
            device_uuid=read.text("DEVICE_UUID"),
            device_api_key=read.text("DEVICE_API_KEY"),
            provisioning_key=read.text("PROVISIONING_KEY"),
            device_name=read.text("DEVICE_NAME"),
            handler_dir_override=read.path("FLEETCLOUD_AGENT_HANDLERS"),
            local_api=read.flag("FLEETCLOUD_AGENT_LOCAL_API", True),
            local_api_port=read.number(
                "FLEETCLOUD_AGENT_LOCAL_API_PORT", int, DEFAULT_LOCAL_API_PORT, low=0, high=65535
            ),
            grace_seconds=read.number("FLEETCLOUD_AGENT_GRACE_SECONDS", float, 30.0, low=0),
            kill_seconds=read.number("FLEETCLOUD_AGENT_KILL_SECONDS", float, 5.0, low=0),
            backoff_base=read.number("FLEETCLOUD_AGENT_BACKOFF_BASE", float, 1.0, low=0.001),
            backoff_max=read.number("FLEETCLOUD_AGENT_BACKOFF_MAX", float, 60.0, low=0.001),
            status_retries=read.number("FLEETCLOUD_AGENT_STATUS_RETRIES", int, 3, low=0),
            output_cap_bytes=read.number("FLEETCLOUD_AGENT_OUTPUT_CAP", int, 10 * 1024, low=1),
            queue_max_messages=read.number(
                "FLEETCLOUD_AGENT_QUEUE_MAX_MESSAGES", int, 10_000, low=1
            ),
            queue_max_bytes=read.number(
                "FLEETCLOUD_AGENT_QUEUE_MAX_BYTES", int, 64 * 1024 * 1024, low=1024
            ),
            history_limit=read.number("FLEETCLOUD_AGENT_HISTORY_LIMIT", int, 200, low=1),
            log_format=read.choice("FLEETCLOUD_LOG_FORMAT", ("text", "json"), "text"),
        )
        config.check()
        return config

    def check(self) -> None:
        """Refuse combinations that cannot work, with the variable to fix."""
        if self.device_api_key and not self.device_uuid:
            raise ConfigError("DEVICE_API_KEY is set but DEVICE_UUID is not; set both")
        if self.device_uuid and not self.device_api_key:
            raise ConfigError("DEVICE_UUID is set but DEVICE_API_KEY is not; set both")
        needs_cloud = self.enable_cloud_jobs or self.provisioning_key
        if needs_cloud and not self.cloud_api_url:
            raise ConfigError(
                "CLOUD_API_URL is not set; give the cloud's jobs API, e.g. "
                "http://your-cloud-server:8000/api/v1"
            )
        if self.local_api and not self.server_url:
            raise ConfigError(
                "the local API forwards messages to the cloud's data API, but neither "
                "CLOUD_API_URL (ending in /api/v1) nor FLEETCLOUD_URL says where it is"
            )


def server_url(explicit: str | None, cloud_api_url: str | None) -> str | None:
    """The data API's server: ``FLEETCLOUD_URL``, or ``CLOUD_API_URL`` minus ``/api/v1``."""
    if explicit:
        return explicit.rstrip("/")
    if cloud_api_url and cloud_api_url.endswith(JOBS_API_SUFFIX):
        return cloud_api_url.removesuffix(JOBS_API_SUFFIX)
    return None


class _Reader:
    """Typed access to environment variables; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def path(self, name: str) -> Path | None:
        value = self.text(name)
        return Path(value).expanduser() if value else None

    def flag(self, name: str, default: bool) -> bool:
        raw = self.env.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in TRUE:
            return True
        if value in FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, not {raw!r}")

    def number(
        self,
        name: str,
        kind: Callable[[str], T],
        default: T,
        *,
        low: float | None = None,
        high: float | None = None,
    ) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        what = "a whole number" if kind is int else "a number"
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {what}, not {raw!r}") from None
        number = float(value)  # type: ignore[arg-type]
        if (low is not None and number < low) or (high is not None and number > high):
            bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise ConfigError(f"{name} must be {bounds}, not {raw!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
        return raw.lower()
