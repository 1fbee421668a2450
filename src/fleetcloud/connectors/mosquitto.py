"""Mosquitto configuration that makes the broker enforce who may publish where.

``fleetcloud mqtt broker-config --org ID --out DIR`` writes, for one organisation:

- ``passwd`` — every enrolled device (username = agent id, password = its device token)
  and the connector's service account, hashed as Mosquitto's ``$7$`` (PBKDF2-SHA512);
- ``acl`` — the service account may use every topic; a device only
  ``fleetcloud/<its agent id>/#`` (``pattern readwrite fleetcloud/%u/#``): it cannot read
  another device's commands nor publish into another device's channels;
- ``mosquitto.conf`` — no anonymous clients, those two files, persistence (commands
  queued for persistent sessions survive a broker restart), ``max_queued_messages``
  raised far above Mosquitto's default 1000 (past which it drops even QoS 1 messages),
  and ``set_tcp_nodelay true`` (Nagle's delay dominates latency at low rates).

fleetcloud keeps only a SHA-256 of each token, which a broker cannot check a password
against, so a device's broker password hash is stored when its token is at hand:
``fleetcloud mqtt enroll DEVICE_ID --token TOKEN``, or ``broker-config --mint-tokens``,
which gives devices without one a new device token (written to ``device-tokens.json``).
The functions that build the files are pure; ``write_config`` does the I/O.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fleetcloud.connectors.topics import PREFIX
from fleetcloud.core.errors import Forbidden, NotFound
from fleetcloud.core.types import AgentKind, Principal, Role
from fleetcloud.store import agents
from fleetcloud.store.agents import now_ms
from fleetcloud.store.base import Store
from fleetcloud.store.ops import Execute, Fetch, Work

SERVICE_USER = "fleetcloud-connector"
ITERATIONS = 101  # what mosquitto_passwd uses for $7$
MAX_QUEUED_MESSAGES = 100_000
MAX_INFLIGHT_MESSAGES = 1_000


def password_hash(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """Mosquitto's ``$7$`` password hash (PBKDF2-HMAC-SHA512, 12-byte salt)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${iterations}${encoded[0]}${encoded[1]}"


def passwd_text(entries: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{user}:{hashed}\n" for user, hashed in entries)


def acl_text(prefix: str = PREFIX, service_user: str = SERVICE_USER) -> str:
    return (
        "# Written by fleetcloud: devices stay inside their own topics.\n"
        f"user {service_user}\n"
        "topic readwrite #\n"
        "\n"
        f"pattern readwrite {prefix}/%u/#\n"
    )


@dataclass(frozen=True)
class ListenerOptions:
    port: int = 1883
    bind: str = "127.0.0.1"
    run_as: str | None = None  # Mosquitto's ``user``: who it becomes when started as root


def config_text(directory: Path, listener: ListenerOptions) -> str:
    return (
        "# Written by fleetcloud (fleetcloud mqtt broker-config).\n"
        + (f"user {listener.run_as}\n" if listener.run_as else "")
        + "per_listener_settings false\n"
        f"listener {listener.port} {listener.bind}\n"
        "allow_anonymous false\n"
        f"password_file {directory / 'passwd'}\n"
        f"acl_file {directory / 'acl'}\n"
        "persistence true\n"
        f"persistence_location {directory}/\n"
        "autosave_interval 5\n"
        f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}\n"
        "set_tcp_nodelay true\n"
        "log_type error\n"
        "log_type warning\n"
        "log_type notice\n"
    )


# ---------------------------------------------------------------- credentials


def enroll(agent_id: int, organisation_id: int, hashed: str) -> Work[None]:
    yield Execute(
        "INSERT INTO mqtt_credentials (agent_id, organisation_id, password_hash, updated_ms) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET "
        "password_hash = excluded.password_hash, updated_ms = excluded.updated_ms",
        (agent_id, organisation_id, hashed, now_ms()),
    )


def credentials(organisation_id: int) -> Work[list[tuple[int, str]]]:
    rows = yield Fetch(
        "SELECT c.agent_id, c.password_hash FROM mqtt_credentials c "
        "JOIN agents a ON a.id = c.agent_id WHERE c.organisation_id = ? ORDER BY c.agent_id",
        (organisation_id,),
    )
    return [(int(agent_id), str(hashed)) for agent_id, hashed in rows]


async def enroll_token(store: Store, agent_id: int, token: str) -> None:
    """Store the broker password hash of ``token``, which must be ``agent_id``'s."""
    principal = await store.resolve_token(token)
    if principal is None or principal.agent_id != agent_id:
        raise Forbidden(f"that token does not belong to device {agent_id}")
    agent = await store.get_agent(agent_id)
    if agent is None or agent.kind is not AgentKind.DEVICE:
        raise NotFound(f"device {agent_id} does not exist")
    await store.write(enroll(agent_id, agent.organisation_id, password_hash(token)))


async def mint_tokens(store: Store, organisation_id: int) -> dict[str, str]:
    """New device tokens for the organisation's devices that have no broker password."""
    devices = await store.read(agents.list_agents(organisation_id, AgentKind.DEVICE))
    enrolled = {agent_id for agent_id, _ in await store.read(credentials(organisation_id))}
    minted: dict[str, str] = {}
    for device in devices:
        if device.id in enrolled:
            continue
        principal = Principal(device.id, organisation_id, Role.DEVICE)
        token = await store.create_token(principal, label="mqtt")
        await store.write(enroll(device.id, organisation_id, password_hash(token)))
        minted[str(device.id)] = token
    return minted


def _service_password(directory: Path) -> str:
    secret = directory / "connector.secret"
    if secret.exists():
        return secret.read_text().strip()
    password = secrets.token_urlsafe(24)
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return password


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


async def write_config(
    store: Store,
    organisation_id: int,
    directory: Path,
    listener: ListenerOptions,
    *,
    mint: bool = False,
) -> dict[str, object]:
    """Write mosquitto.conf, passwd and acl into ``directory``; returns what the
    connector needs (``connector_url``) and how many devices are in the password file."""
    minted = await mint_tokens(store, organisation_id) if mint else {}
    devices = await store.read(credentials(organisation_id))
    directory, service = await asyncio.to_thread(write_files, directory, listener, devices, minted)
    return {
        "config": str(directory / "mosquitto.conf"),
        "devices": len(devices),
        "minted": len(minted),
        "connector_url": f"mqtt://{SERVICE_USER}:{service}@{listener.bind}:{listener.port}",
    }


def write_files(
    directory: Path,
    listener: ListenerOptions,
    devices: list[tuple[int, str]],
    minted: dict[str, str],
) -> tuple[Path, str]:
    """Write the files; returns the directory and the connector's password."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if minted:
        _write(directory / "device-tokens.json", json.dumps(minted, indent=2) + "\n", 0o600)
    service = _service_password(directory)
    entries = [(SERVICE_USER, password_hash(service))]
    entries += [(str(agent_id), hashed) for agent_id, hashed in devices]
    _write(directory / "passwd", passwd_text(entries), 0o600)
    _write(directory / "acl", acl_text())
    _write(directory / "mosquitto.conf", config_text(directory, listener))
    if listener.run_as is None:
        with_owner_readable(directory)
    return directory, service


def with_owner_readable(directory: Path) -> None:
    """Mosquitto started as root drops to the ``mosquitto`` user: let it read the files
    it needs (the password file stays private to the owner otherwise)."""
    if os.geteuid() != 0:
        return
    try:
        import pwd

        user = pwd.getpwnam("mosquitto")
    except (KeyError, ImportError):
        return
    for name in ("passwd", "acl", "mosquitto.conf"):
        os.chown(directory / name, user.pw_uid, user.pw_gid)
    os.chown(directory, user.pw_uid, user.pw_gid)
