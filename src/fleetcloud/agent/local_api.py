"""The agent's local API for device apps: on 127.0.0.1 only (port 48484 by default).

::

    GET  /v2/device                                  {uuid, agent_id, provisioned, …}
    GET  /v2/status                                  the agent: jobs adapter, queue
    POST /v2/channels/{name}/messages                {"data": …, "ts"?: ms} → 202
    POST /api/agents/{agent_id}/channels/{name}/messages   the data API's shape → 202

A publish is accepted (202) once it is on disk in the store-and-forward queue, with the
message id it will have in the cloud; the forwarder delivers it when it can. A full
queue answers 507. Errors use the data API's JSON shape
(``{"error", "message", "status"}``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetcloud.agent.credentials import Credentials
from fleetcloud.agent.queue import MessageQueue
from fleetcloud.api.http import JSONResponse
from fleetcloud.core import jsonish
from fleetcloud.core.errors import ApiError, BadRequest, ConfigError, NotFound, PayloadTooLarge

log = logging.getLogger("fleetcloud.agent.LocalAPI")

HOST = "127.0.0.1"
MAX_BODY = 256 * 1024
MAX_TS_MS = 2**41 + 1_577_836_800_000


@dataclass
class LocalState:
    """What the local API shows and where it puts messages."""

    queue: MessageQueue
    cloud_api_url: str | None = None
    credentials: Credentials | None = None
    status: Callable[[], dict[str, Any]] = field(default=lambda: {})


def state_of(request: Request) -> LocalState:
    state: LocalState = request.app.state.local
    return state


async def device(request: Request) -> Response:
    state = state_of(request)
    credentials = state.credentials
    return JSONResponse(
        {
            "uuid": credentials.uuid if credentials else None,
            "agent_id": credentials.agent_id if credentials else None,
            "provisioned": credentials is not None,
            "cloud_api_url": state.cloud_api_url,
            "queue": {"pending": state.queue.count, "pending_bytes": state.queue.bytes},
        }
    )


async def status(request: Request) -> Response:
    state = state_of(request)
    return JSONResponse(
        {
            **state.status(),
            "queue": {"pending": state.queue.count, "pending_bytes": state.queue.bytes},
        }
    )


async def publish(request: Request) -> Response:
    state = state_of(request)
    name = channel_name(request.path_params["name"])
    body = await read_message(request)
    message = await state.queue.put(
        name, body["data"], ts=timestamp(body.get("ts")), message_id=given_id(body)
    )
    return JSONResponse(
        {
            "queued": True,
            "message_id": str(message.message_id),
            "channel": name,
            "pending": state.queue.count,
        },
        status_code=202,
    )


async def publish_as_agent(request: Request) -> Response:
    """The data API's path, for clients written for it: only this device's own agent."""
    credentials = state_of(request).credentials
    agent_id = request.path_params["agent_id"]
    if credentials is not None and agent_id not in ("me", credentials.agent_id):
        raise NotFound(f"this agent forwards only for itself ({credentials.agent_id})")
    return await publish(request)


def channel_name(raw: str) -> str:
    if not raw or any(not segment for segment in raw.split("/")):
        raise BadRequest(f"{raw!r} is not a valid channel name")
    return raw


async def read_message(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise PayloadTooLarge(f"a message may be at most {MAX_BODY} bytes")
    parsed = jsonish.parse_body(body)
    if not isinstance(parsed, dict) or "data" not in parsed:
        raise BadRequest('a message is {"data": …, "ts"?: milliseconds}; "data" is missing')
    return parsed


def timestamp(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < MAX_TS_MS:
        raise BadRequest(f"ts must be a Unix time in milliseconds, not {value!r}")
    return int(value)


def given_id(body: dict[str, Any]) -> int | None:
    value = body.get("message_id")
    return None if value is None else jsonish.to_id(value, "message_id")


async def api_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):
        raise exc
    return JSONResponse(exc.to_json(), status_code=exc.status)


def create_local_app(state: LocalState) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v2/device", device, methods=["GET"]),
            Route("/v2/status", status, methods=["GET"]),
            Route("/v2/channels/{name:path}/messages", publish, methods=["POST"]),
            Route(
                "/api/agents/{agent_id}/channels/{name:path}/messages",
                publish_as_agent,
                methods=["POST"],
            ),
        ],
        exception_handlers={ApiError: api_error},
    )
    app.state.local = state
    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the agent handles SIGTERM and SIGINT itself


def listen(port: int) -> socket.socket:
    """A listening socket on the loopback interface (only this device can connect)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the local API cannot listen on {HOST}:{port}: {exc.strerror or exc}; "
            "set FLEETCLOUD_AGENT_LOCAL_API_PORT to a free port"
        ) from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


class LocalApi:
    """Serves the local API on ``sock`` until ``close()``."""

    def __init__(self, state: LocalState, sock: socket.socket) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_local_app(state),
            log_config=None,
            access_log=False,
            lifespan="off",
            log_level="warning",
        )
        self.server = _Server(config)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            self.sock.close()

    def close(self) -> None:
        self.server.should_exit = True
