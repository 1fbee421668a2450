"""The device's one credential: its uuid (= agent id) and API key.

From ``DEVICE_UUID`` + ``DEVICE_API_KEY``; else from ``credentials.json`` in the data
directory (mode 0600); else by registering with ``PROVISIONING_KEY`` on first start, which
writes that file so the next start needs no key.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from fleetcloud.agent import files
from fleetcloud.agent.backoff import Backoff, sleep_unless
from fleetcloud.agent.cloud import JobsClient
from fleetcloud.agent.config import AgentConfig
from fleetcloud.agent.errors import CloudUnreachable
from fleetcloud.agent.history import iso_now
from fleetcloud.core.errors import ConfigError

log = logging.getLogger("fleetcloud.agent.Provisioning")


@dataclass(frozen=True)
class Credentials:
    uuid: str
    api_key: str
    agent_id: str
    source: str  # "environment" | "file" | "registered"


class CredentialFile:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "credentials.json"

    def load(self) -> Credentials | None:
        raw = files.read_json(self.path)
        if not isinstance(raw, dict) or not raw.get("uuid") or not raw.get("api_key"):
            return None
        uuid = str(raw["uuid"])
        return Credentials(uuid, str(raw["api_key"]), str(raw.get("agent_id") or uuid), "file")

    def save(self, credentials: Credentials, cloud_api_url: str | None) -> None:
        files.write_json(
            self.path,
            {
                "uuid": credentials.uuid,
                "agent_id": credentials.agent_id,
                "api_key": credentials.api_key,
                "cloud_api_url": cloud_api_url,
                "registered_at": iso_now(),
            },
        )


def known_credentials(config: AgentConfig) -> Credentials | None:
    """The credentials the agent has without asking the cloud."""
    if config.device_uuid and config.device_api_key:
        uuid = config.device_uuid
        return Credentials(uuid, config.device_api_key, uuid, "environment")
    return CredentialFile(config.data_dir).load()


async def register(
    config: AgentConfig, backoff: Backoff, stop: asyncio.Event
) -> Credentials | None:
    """Register with ``PROVISIONING_KEY``, retrying while the cloud is unreachable; None if
    stopped first. A refusal (bad key) raises ``CloudRefused``."""
    key, url = config.provisioning_key, config.cloud_api_url
    if not key or not url:
        raise ConfigError("registering needs both PROVISIONING_KEY and CLOUD_API_URL")
    client = JobsClient(url)
    try:
        attempt = 0
        while not stop.is_set():
            try:
                answer = await client.register(key, config.device_name)
            except CloudUnreachable as exc:
                delay = backoff.delay(attempt)
                log.warning("Registration failed, retrying in %.1f s: %s", delay, exc.message)
                attempt += 1
                await sleep_unless(stop, delay)
                continue
            uuid = str(answer.get("uuid") or answer.get("agent_id"))
            credentials = Credentials(
                uuid, str(answer["api_key"]), str(answer.get("agent_id") or uuid), "registered"
            )
            CredentialFile(config.data_dir).save(credentials, config.cloud_api_url)
            log.info("Registered with the cloud as device %s", uuid)
            return credentials
        return None
    finally:
        await client.aclose()
