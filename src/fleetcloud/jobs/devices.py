"""Store work for devices: provisioning keys, registration, device groups.

A device is a device agent (``store.agents``); its ``uuid`` is its agent id. Registering
with a provisioning key creates the agent and its one credential, a device token, which
is both its ``X-Device-API-Key`` for the jobs API and its bearer token for the data API.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from fleetcloud.core.errors import Conflict, NotFound, Unauthorized
from fleetcloud.core.ids import new_id
from fleetcloud.core.types import Agent, AgentKind, Principal, Role
from fleetcloud.jobs.model import Device, Group, ProvisioningKey, id_in
from fleetcloud.store import agents
from fleetcloud.store.agents import hash_token, now_ms
from fleetcloud.store.ops import Execute, ExecuteMany, Fetch, Work, placeholders

KEY_COLUMNS = "id, organisation_id, label, created_ms, expires_ms, max_uses, uses"
GROUP_COLUMNS = "id, organisation_id, name, description, created_ms"
CHUNK = 500


def make_provisioning_key() -> str:
    return "fcp_" + secrets.token_urlsafe(32)


def _key(row: Sequence[Any]) -> ProvisioningKey:
    key_id, organisation_id, label, created, expires, max_uses, uses = row
    return ProvisioningKey(
        int(key_id),
        int(organisation_id),
        str(label),
        int(created),
        None if expires is None else int(expires),
        None if max_uses is None else int(max_uses),
        int(uses),
    )


# ---------------------------------------------------------------- provisioning keys


def create_provisioning_key(
    organisation_id: int,
    *,
    label: str = "",
    ttl_seconds: int | None = None,
    max_uses: int | None = None,
) -> Work[tuple[ProvisioningKey, str]]:
    """Store a new key (only its hash) and return it with the key itself (shown once)."""
    organisation = yield from agents.get_organisation(organisation_id)
    if organisation is None:
        raise NotFound(f"organisation {organisation_id} does not exist")
    secret, created = make_provisioning_key(), now_ms()
    expires = None if ttl_seconds is None else created + ttl_seconds * 1000
    key = ProvisioningKey(new_id(), organisation_id, label, created, expires, max_uses, 0)
    yield Execute(
        f"INSERT INTO provisioning_keys (hash, {KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
        (hash_token(secret), key.id, organisation_id, label, created, expires, max_uses, 0),
    )
    return key, secret


def list_provisioning_keys(organisation_id: int) -> Work[list[ProvisioningKey]]:
    rows = yield Fetch(
        f"SELECT {KEY_COLUMNS} FROM provisioning_keys WHERE organisation_id = ? ORDER BY id",  # noqa: S608 - constant columns
        (organisation_id,),
    )
    return [_key(row) for row in rows]


def delete_provisioning_key(organisation_id: int, key_id: int) -> Work[None]:
    count = yield Execute(
        "DELETE FROM provisioning_keys WHERE id = ? AND organisation_id = ?",
        (key_id, organisation_id),
    )
    if not count:
        raise NotFound(f"provisioning key {key_id} does not exist")


def use_provisioning_key(secret: str, now: int) -> Work[ProvisioningKey]:
    """Count one use of the key, atomically; 401 if it is unknown, expired or used up."""
    rows = yield Fetch(
        f"SELECT {KEY_COLUMNS} FROM provisioning_keys WHERE hash = ?",  # noqa: S608 - constant columns
        (hash_token(secret),),
    )
    refused = Unauthorized("the provisioning key is not valid (unknown, expired or used up)")
    if not rows:
        raise refused
    key = _key(rows[0])
    if key.expires_ms is not None and key.expires_ms <= now:
        raise refused
    limit = key.max_uses if key.max_uses is not None else 2**62
    changed = yield Execute(
        "UPDATE provisioning_keys SET uses = uses + 1 WHERE id = ? AND uses < ?", (key.id, limit)
    )
    if not changed:
        raise refused
    return key


def register_device(secret: str, name: str | None) -> Work[tuple[Agent, str]]:
    """Create a device with a provisioning key; returns the agent and its API key."""
    key = yield from use_provisioning_key(secret, now_ms())
    agent = yield from agents.create_agent(
        key.organisation_id, AgentKind.DEVICE, name or f"device-{secrets.token_hex(4)}"
    )
    principal = Principal(agent.id, agent.organisation_id, Role.DEVICE)
    token = yield from agents.create_token(principal, label="registration")
    return agent, token


# ---------------------------------------------------------------- devices


def require_device(organisation_id: int, device_id: int) -> Work[Agent]:
    agent = yield from agents.get_agent(device_id)
    if agent is None or agent.organisation_id != organisation_id:
        raise NotFound(f"device {device_id} does not exist")
    if agent.kind is not AgentKind.DEVICE:
        raise NotFound(f"device {device_id} does not exist")
    return agent


def require_devices(organisation_id: int, device_ids: Sequence[int]) -> Work[list[int]]:
    """``device_ids`` if every one is a device of the organisation (404 names one that is not)."""
    found: set[int] = set()
    for start in range(0, len(device_ids), CHUNK):
        chunk = list(device_ids[start : start + CHUNK])
        rows = yield Fetch(
            f"SELECT id FROM agents WHERE organisation_id = ? AND kind = ? "  # noqa: S608 - constant columns
            f"AND id IN ({placeholders(len(chunk))})",
            (organisation_id, AgentKind.DEVICE.value, *chunk),
        )
        found.update(int(row[0]) for row in rows)
    missing = [d for d in device_ids if d not in found]
    if missing:
        raise NotFound(f"device {missing[0]} does not exist")
    return list(device_ids)


def list_devices(organisation_id: int, group_id: int | None = None) -> Work[list[Device]]:
    found = yield from agents.list_agents(organisation_id, AgentKind.DEVICE)
    rows = yield Fetch(
        "SELECT m.device_id, m.group_id FROM device_group_members m "
        "JOIN device_groups g ON g.id = m.group_id WHERE g.organisation_id = ? "
        "ORDER BY m.group_id",
        (organisation_id,),
    )
    groups: dict[int, list[int]] = {}
    for device_id, member_of in rows:
        groups.setdefault(int(device_id), []).append(int(member_of))
    devices = [
        Device(a.id, a.organisation_id, a.name, a.created_ms, tuple(groups.get(a.id, ())))
        for a in found
    ]
    if group_id is not None:
        devices = [d for d in devices if group_id in d.groups]
    return devices


def get_device(organisation_id: int, device_id: int) -> Work[Device]:
    agent = yield from require_device(organisation_id, device_id)
    rows = yield Fetch(
        "SELECT group_id FROM device_group_members WHERE device_id = ? ORDER BY group_id",
        (device_id,),
    )
    groups = tuple(int(row[0]) for row in rows)
    return Device(agent.id, agent.organisation_id, agent.name, agent.created_ms, groups)


def all_device_ids(organisation_id: int) -> Work[list[int]]:
    rows = yield Fetch(
        "SELECT id FROM agents WHERE organisation_id = ? AND kind = ? ORDER BY id",
        (organisation_id, AgentKind.DEVICE.value),
    )
    return [int(row[0]) for row in rows]


# ---------------------------------------------------------------- groups


def _group(row: Sequence[Any], members: Sequence[int]) -> Group:
    return Group(int(row[0]), int(row[1]), str(row[2]), str(row[3]), int(row[4]), tuple(members))


def create_group(
    organisation_id: int, name: str, description: str, devices: Sequence[int]
) -> Work[Group]:
    existing = yield Fetch(
        "SELECT id FROM device_groups WHERE organisation_id = ? AND name = ?",
        (organisation_id, name),
    )
    if existing:
        raise Conflict(f"a group named {name!r} already exists")
    yield from require_devices(organisation_id, devices)
    group_id = new_id()
    yield Execute(
        f"INSERT INTO device_groups ({GROUP_COLUMNS}) VALUES (?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
        (group_id, organisation_id, name, description, now_ms()),
    )
    if devices:
        yield ExecuteMany(
            "INSERT INTO device_group_members (group_id, device_id) VALUES (?, ?)",
            [(group_id, device) for device in devices],
        )
    group = yield from get_group(organisation_id, str(group_id))
    return group


def find_group(organisation_id: int, ref: str) -> Work[Group | None]:
    """A group by id (digits) or by name."""
    as_id = id_in(ref)
    column = "id" if as_id is not None else "name"
    value: int | str = ref if as_id is None else as_id
    rows = yield Fetch(
        f"SELECT {GROUP_COLUMNS} FROM device_groups WHERE organisation_id = ? AND {column} = ?",  # noqa: S608 - constant columns
        (organisation_id, value),
    )
    if not rows:
        return None
    members = yield Fetch(
        "SELECT device_id FROM device_group_members WHERE group_id = ? ORDER BY device_id",
        (int(rows[0][0]),),
    )
    return _group(rows[0], [int(m[0]) for m in members])


def get_group(organisation_id: int, ref: str) -> Work[Group]:
    group = yield from find_group(organisation_id, ref)
    if group is None:
        raise NotFound(f"group {ref} does not exist")
    return group


def list_groups(organisation_id: int) -> Work[list[Group]]:
    rows = yield Fetch(
        f"SELECT {GROUP_COLUMNS} FROM device_groups WHERE organisation_id = ? ORDER BY name",  # noqa: S608 - constant columns
        (organisation_id,),
    )
    members = yield Fetch(
        "SELECT m.group_id, m.device_id FROM device_group_members m "
        "JOIN device_groups g ON g.id = m.group_id WHERE g.organisation_id = ? "
        "ORDER BY m.device_id",
        (organisation_id,),
    )
    by_group: dict[int, list[int]] = {}
    for group_id, device_id in members:
        by_group.setdefault(int(group_id), []).append(int(device_id))
    return [_group(row, by_group.get(int(row[0]), [])) for row in rows]


def delete_group(organisation_id: int, ref: str) -> Work[None]:
    group = yield from get_group(organisation_id, ref)
    yield Execute("DELETE FROM device_group_members WHERE group_id = ?", (group.id,))
    yield Execute("DELETE FROM device_groups WHERE id = ?", (group.id,))


def add_members(organisation_id: int, ref: str, devices: Sequence[int]) -> Work[Group]:
    group = yield from get_group(organisation_id, ref)
    yield from require_devices(organisation_id, devices)
    new = [d for d in devices if d not in group.devices]
    if new:
        yield ExecuteMany(
            "INSERT INTO device_group_members (group_id, device_id) VALUES (?, ?) "
            "ON CONFLICT (group_id, device_id) DO NOTHING",
            [(group.id, device) for device in new],
        )
    updated = yield from get_group(organisation_id, str(group.id))
    return updated


def remove_member(organisation_id: int, ref: str, device_id: int) -> Work[Group]:
    group = yield from get_group(organisation_id, ref)
    count = yield Execute(
        "DELETE FROM device_group_members WHERE group_id = ? AND device_id = ?",
        (group.id, device_id),
    )
    if not count:
        raise NotFound(f"device {device_id} is not in group {group.name!r}")
    updated = yield from get_group(organisation_id, str(group.id))
    return updated


def resolve_targets(
    organisation_id: int, target_type: str, targets: Sequence[str]
) -> Work[list[int]]:
    """The devices a job targets, each once, in the order given (all: by id)."""
    if target_type == "all":
        found = yield from all_device_ids(organisation_id)
        return found
    if target_type == "group":
        found = yield from group_devices(organisation_id, targets)
        return found
    devices = [_device_ref(ref) for ref in targets]
    found = yield from require_devices(organisation_id, devices)
    return found


def _device_ref(ref: str) -> int:
    device_id = id_in(ref)
    if device_id is None:
        raise NotFound(f"device {ref} does not exist")
    return device_id


def group_devices(organisation_id: int, refs: Sequence[str]) -> Work[list[int]]:
    """Every device in the groups ``refs`` (ids or names), each once, in order."""
    devices: dict[int, None] = {}
    for ref in refs:
        group = yield from get_group(organisation_id, ref)
        devices.update(dict.fromkeys(group.devices))
    return list(devices)
