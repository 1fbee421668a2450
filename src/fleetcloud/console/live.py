"""``/console/live``: the websocket gateway for console pages, signed in by the session
cookie instead of a token.

It speaks the gateway protocol of docs/api.md unchanged (HELLO, IDENTIFY, SUBSCRIBE,
dispatches, heartbeats, RESUME), on the same hub as ``/api/gateway``; only ``IDENTIFY``
and ``RESUME`` take the reader from the cookie and ignore any ``token`` in the frame,
so page scripts never hold a token. The handshake must come from the console's origin.
"""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket

from fleetcloud.api.gateway import Connection, Hub, hub_of
from fleetcloud.core.errors import ApiError, Unauthorized
from fleetcloud.core.types import Principal

from .sessions import ENDED, check_same_origin, session_of

POLICY_VIOLATION = 1008


class CookieConnection(Connection):
    def __init__(self, websocket: WebSocket, hub: Hub, session: str) -> None:
        super().__init__(websocket, hub)
        self.console_session = session

    async def principal(self, data: Any) -> Principal:
        if self.console_session in ENDED:
            raise Unauthorized("the console session has ended: sign in again")
        return await self.platform.auth.principal(self.console_session)


async def endpoint(websocket: WebSocket) -> None:
    session = session_of(websocket)
    if session in ENDED:
        session = None
    try:
        check_same_origin(websocket)
    except ApiError:
        session = None
    if session is None:  # refused before the handshake: the browser sees a 403
        await websocket.close(POLICY_VIOLATION)
        return
    await CookieConnection(websocket, hub_of(websocket.app), session).run()
