"""Organisations, agents and tokens."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from fleetcloud.core import jsonish
from fleetcloud.core.errors import NotFound
from fleetcloud.core.ids import new_id
from fleetcloud.core.types import Agent, AgentKind, Organisation, Principal, Role
from fleetcloud.store.ops import Execute, Fetch, Work

AGENT_COLUMNS = "id, organisation_id, kind, name, created_ms"


def now_ms() -> int:
    return int(time.time() * 1000)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make_token() -> str:
    return "fc_" + secrets.token_urlsafe(32)


def _agent(row: tuple[Any, ...]) -> Agent:
    agent_id, organisation_id, kind, name, created_ms = row
    return Agent(int(agent_id), int(organisation_id), AgentKind(kind), str(name), int(created_ms))


def create_organisation(name: str) -> Work[Organisation]:
    organisation_id, agent_id, created = new_id(), new_id(), now_ms()
    yield Execute(
        "INSERT INTO organisations (id, name, agent_id, created_ms) VALUES (?, ?, ?, ?)",
        (organisation_id, name, agent_id, created),
    )
    yield Execute(
        f"INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
        (agent_id, organisation_id, AgentKind.ORGANISATION.value, name, created),
    )
    return Organisation(organisation_id, name, agent_id)


def get_organisation(organisation_id: int) -> Work[Organisation | None]:
    rows = yield Fetch(
        "SELECT id, name, agent_id FROM organisations WHERE id = ?", (organisation_id,)
    )
    if not rows:
        return None
    return Organisation(int(rows[0][0]), str(rows[0][1]), int(rows[0][2]))


def create_agent(organisation_id: int, kind: AgentKind, name: str) -> Work[Agent]:
    organisation = yield from get_organisation(organisation_id)
    if organisation is None:
        raise NotFound(f"organisation {organisation_id} does not exist")
    agent = Agent(new_id(), organisation_id, kind, name, now_ms())
    yield Execute(
        f"INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
        (agent.id, agent.organisation_id, agent.kind.value, agent.name, agent.created_ms),
    )
    return agent


def get_agent(agent_id: int) -> Work[Agent | None]:
    rows = yield Fetch(f"SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?", (agent_id,))
    return _agent(rows[0]) if rows else None


def list_agents(organisation_id: int, kind: AgentKind | None = None) -> Work[list[Agent]]:
    if kind is None:
        rows = yield Fetch(
            f"SELECT {AGENT_COLUMNS} FROM agents WHERE organisation_id = ? ORDER BY id",
            (organisation_id,),
        )
    else:
        rows = yield Fetch(
            f"SELECT {AGENT_COLUMNS} FROM agents WHERE organisation_id = ? AND kind = ? "
            "ORDER BY id",
            (organisation_id, kind.value),
        )
    return [_agent(row) for row in rows]


def create_token(
    principal: Principal, *, label: str = "", ttl_seconds: float | None = None
) -> Work[str]:
    """Store a new token for ``principal`` (only its hash) and return the token itself."""
    token = make_token()
    expires = None if ttl_seconds is None else now_ms() + int(ttl_seconds * 1000)
    scopes = jsonish.dumps_str(sorted(principal.scopes)) if principal.scopes else None
    yield Execute(
        "INSERT INTO tokens (hash, agent_id, organisation_id, role, scopes, label, created_ms,"
        " expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            hash_token(token),
            principal.agent_id,
            principal.organisation_id,
            principal.role.value,
            scopes,
            label,
            now_ms(),
            expires,
        ),
    )
    return token


def resolve_token(token: str) -> Work[Principal | None]:
    rows = yield Fetch(
        "SELECT agent_id, organisation_id, role, scopes, expires_ms FROM tokens WHERE hash = ?",
        (hash_token(token),),
    )
    if not rows:
        return None
    agent_id, organisation_id, role, scopes, expires_ms = rows[0]
    if expires_ms is not None and expires_ms < now_ms():
        return None
    scope_ids = frozenset(int(s) for s in jsonish.loads(scopes)) if scopes else frozenset()
    return Principal(int(agent_id), int(organisation_id), Role(role), scope_ids)


def revoke_tokens(agent_id: int) -> Work[int]:
    count: int = yield Execute("DELETE FROM tokens WHERE agent_id = ?", (agent_id,))
    return count
