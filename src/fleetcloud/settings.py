"""Settings, from command-line flags, ``FLEETCLOUD_*`` environment variables or defaults."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE = "sqlite:///fleetcloud.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETCLOUD_", extra="ignore")

    database_url: str = Field(DEFAULT_DATABASE, description="sqlite:///FILE or postgresql://…")
    bus_url: str = Field("memory", description="memory, or kafka://HOST:PORT")
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(1 << 20, description="largest request body accepted (413)")
    token_cache_seconds: float = Field(10.0, description="how long a checked token is trusted")
    heartbeat_interval_ms: int = Field(20_000, description="websocket heartbeat interval")
    log_format: str = Field("json", description="json or text")
    log_level: str = "INFO"
