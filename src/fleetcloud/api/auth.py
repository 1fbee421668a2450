"""Who is calling, and what they may touch.

Rules (404 hides anything in another organisation; 403 is for what a caller can see but
may not do):

- an **admin** token may read and write every agent of its organisation;
- any other token may write its own agent's channels and those of the agents in its
  scopes (app invocations), and read its organisation's public channels;
- a **private** channel is readable only by whoever may write to it;
- a feature may add a check for the requests its own role's tokens make
  (``ROLE_GUARDS``; the apps feature refuses an invocation token's writes to the channel
  that invoked it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection

from fleetcloud.core.errors import Forbidden, NotFound, Unauthorized
from fleetcloud.core.types import Agent, Channel, Principal, Role
from fleetcloud.store import agents
from fleetcloud.store.base import Store

ORGANISATION_HEADER = "x-doover-organisation"

RequestGuard = Callable[[HTTPConnection, Principal, str], Awaitable[None]]
ROLE_GUARDS: dict[Role, RequestGuard] = {}
"""Per role, a check run on every authenticated request (with the token) that may raise."""


DEVICE_KEY_SECONDS = 60.0
"""How long a checked ``X-Device-API-Key`` is trusted: longer than a device agent's
long-poll (30 s by default), so a fleet that keeps polling costs no token lookups."""


class Authenticator:
    """Resolves tokens (briefly cached, so a hot path costs no query) and agents."""

    def __init__(
        self,
        store: Store,
        cache_seconds: float = 10.0,
        device_key_seconds: float = DEVICE_KEY_SECONDS,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.device_key_seconds = device_key_seconds
        self._tokens: dict[str, tuple[Principal, float]] = {}
        self._device_keys: dict[str, tuple[Principal, float]] = {}
        self._agents: dict[int, Agent] = {}

    async def principal(self, token: str) -> Principal:
        cached = self._tokens.get(token)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await self.store.read(agents.resolve_token(token))
        if principal is None:
            raise Unauthorized("the token is not valid (unknown, revoked or expired)")
        remember(self._tokens, token, principal, now + self.cache_seconds)
        return principal

    async def device_key(self, key: str) -> Principal:
        """Who sent ``X-Device-API-Key: key``. A device's key is trusted for
        ``device_key_seconds`` once checked; any other token as ``principal`` trusts it."""
        cached = self._device_keys.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await self.principal(key)
        if principal.role is Role.DEVICE:
            remember(self._device_keys, key, principal, now + self.device_key_seconds)
        return principal

    async def authenticate(self, conn: HTTPConnection) -> Principal:
        header = conn.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <token>'")
        principal = await self.principal(token.strip())
        organisation = conn.headers.get(ORGANISATION_HEADER)
        if organisation and organisation.strip() != str(principal.organisation_id):
            raise Forbidden(f"the token does not belong to organisation {organisation.strip()}")
        guard = ROLE_GUARDS.get(principal.role)
        if guard is not None:
            await guard(conn, principal, token.strip())
        return principal

    async def agent(self, principal: Principal, agent_id: int) -> Agent:
        """The agent, if it exists in the caller's organisation (404 otherwise)."""
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = await self.store.read(agents.get_agent(agent_id))
            if agent is not None:
                self._agents[agent_id] = agent
        if agent is None or agent.organisation_id != principal.organisation_id:
            raise NotFound(f"agent {agent_id} does not exist")
        return agent

    def forget_agent(self, agent_id: int) -> None:
        self._agents.pop(agent_id, None)


def remember(
    cache: dict[str, tuple[Principal, float]], token: str, principal: Principal, until: float
) -> None:
    if len(cache) > 100_000:
        cache.clear()
    cache[token] = (principal, until)


def may_write(principal: Principal, agent: Agent) -> bool:
    return (
        principal.is_admin or principal.agent_id == agent.id or agent.id in principal.scopes
    ) and principal.organisation_id == agent.organisation_id


def may_read(principal: Principal, agent: Agent, channel: Channel | None) -> bool:
    if principal.organisation_id != agent.organisation_id:
        return False
    return channel is None or not channel.is_private or may_write(principal, agent)


def require_write(principal: Principal, agent: Agent) -> None:
    if not may_write(principal, agent):
        raise Forbidden(f"this token may not write to agent {agent.id}'s channels")


def require_read(principal: Principal, agent: Agent, channel: Channel) -> None:
    if not may_read(principal, agent, channel):
        raise Forbidden(f"channel {channel.name!r} is private to agent {agent.id}")
