"""The agent's local API for device apps: on 127.0.0.1 only (port 48484 by default).

::

    GET   /v2/device                                  {uuid, agent_id, provisioned, …}
    GET   /v2/status                                  the agent: jobs adapter, queue
    POST  /v2/channels/{name}/messages                {"data": …, "ts"?: ms} → 202
    GET   /v2/channels/{name}/aggregate               the agent's view of the aggregate
    PATCH /v2/channels/{name}/aggregate[?replace=a.b] a merge-patch → 202
    POST  /api/agents/{agent_id}/channels/{name}/messages   the data API's shape → 202

A write (a publish or an aggregate patch) is accepted (202) once it is on disk in the
store-and-forward queue — a message with the id it will have in the cloud; the forwarder
delivers it when it can. A full queue answers 507.

A read asks the cloud's data API with the device's key (a short timeout; after a failure
the cloud is not asked again for ``READ_RETRY_SECONDS``) and keeps the answer on disk; when
the cloud cannot be asked it answers from that copy. Either way the writes still waiting
in the queue for that channel are merged on top, so an app reads its own writes even
while the cloud is away. ``"source"`` says where the base came from (``cloud``, ``cache``
or ``none``); 404 means the cloud has no such channel, 503 that the cloud cannot be asked
and the agent has no copy.

Errors use the data API's JSON shape (``{"error", "message", "status"}``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetcloud.agent.cloud import DataClient
from fleetcloud.agent.config import server_url as default_server_url
from fleetcloud.agent.credentials import Credentials
from fleetcloud.agent.errors import CloudRefused, CloudUnreachable
from fleetcloud.agent.queue import PATCH, MessageQueue, QueuedMessage
from fleetcloud.api.http import JSONResponse
from fleetcloud.core import jsonish
from fleetcloud.core.errors import ApiError, BadRequest, ConfigError, NotFound, PayloadTooLarge
from fleetcloud.core.merge import apply_update, merge_patch, split_path

log = logging.getLogger("fleetcloud.agent.LocalAPI")

HOST = "127.0.0.1"
MAX_BODY = 256 * 1024
MAX_TS_MS = 2**41 + 1_577_836_800_000
READ_TIMEOUT = 3.0  # seconds a read waits for the cloud before the app gets the copy
READ_RETRY_SECONDS = 2.0  # after a failed read, how long reads use the copy only


class NoCopy(ApiError):
    """The cloud cannot be asked and the agent keeps no copy of the aggregate."""

    status = 503


class AggregateReader:
    """Reads aggregates from the cloud with the device's key; keeps each answer on disk
    (in the queue's file) for the reads the cloud cannot answer."""

    def __init__(
        self,
        queue: MessageQueue,
        server_url: str | None,
        *,
        timeout: float = READ_TIMEOUT,
        retry_seconds: float = READ_RETRY_SECONDS,
    ) -> None:
        self.queue = queue
        self.server_url = server_url
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._client: DataClient | None = None
        self._retry_at = 0.0
        self._kept: dict[str, bytes | None] = {}  # what the disk holds, to skip rewrites

    async def read(
        self, credentials: Credentials | None, channel: str
    ) -> tuple[dict[str, Any] | None, str]:
        """``(Aggregate JSON or None, source)``: from the cloud if it answers, else the copy."""
        client = self._client_for(credentials)
        if client is not None and credentials is not None and time.monotonic() >= self._retry_at:
            try:
                found = await client.get_aggregate(
                    credentials.agent_id, channel, timeout=self.timeout
                )
            except CloudRefused as exc:
                if exc.status == 404:
                    await self._keep(channel, None)
                    return None, "cloud"
                log.warning("The cloud refused a read of %r: %s", channel, exc.message)
                self._retry_at = time.monotonic() + self.retry_seconds
            except CloudUnreachable as exc:
                log.debug("Cloud unreachable for reads; answering from the copy: %s", exc)
                self._retry_at = time.monotonic() + self.retry_seconds
            else:
                await self._keep(channel, found)
                return found, "cloud"
        kept = await self.queue.cached_aggregate(channel)
        return kept, "none" if kept is None else "cache"

    def _client_for(self, credentials: Credentials | None) -> DataClient | None:
        """The data API client (once the device has its key and the server is known)."""
        if self._client is None and credentials is not None and self.server_url:
            self._client = DataClient(self.server_url, credentials.api_key)
        return self._client

    async def _keep(self, channel: str, aggregate: dict[str, Any] | None) -> None:
        encoded = None if aggregate is None else jsonish.dumps(aggregate)
        if channel in self._kept and self._kept[channel] == encoded:
            return
        await self.queue.keep_aggregate(channel, aggregate)
        self._kept[channel] = encoded

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def overlay(data: Any, writes: list[QueuedMessage]) -> Any:
    """``data`` with the queued ``writes`` applied in order, as the cloud will apply them:
    a message merges its data (RFC 7396), a patch merges or replaces its subtree."""
    for write in writes:
        change = jsonish.loads(write.data)
        if write.kind == PATCH:
            data = apply_update(data, change, write.replace)
        else:
            data = merge_patch(data, change)
    return data


@dataclass
class LocalState:
    """What the local API shows, where it puts writes and how it reads aggregates."""

    queue: MessageQueue
    cloud_api_url: str | None = None
    credentials: Credentials | None = None
    status: Callable[[], dict[str, Any]] = field(default=lambda: {})
    server_url: str | None = None  # the data API; by default CLOUD_API_URL minus /api/v1
    reads: AggregateReader | None = None

    def reader(self) -> AggregateReader:
        if self.reads is None:
            url = self.server_url or default_server_url(None, self.cloud_api_url)
            self.reads = AggregateReader(self.queue, url)
        return self.reads

    async def aclose(self) -> None:
        if self.reads is not None:
            await self.reads.aclose()


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


async def read_aggregate(request: Request) -> Response:
    state = state_of(request)
    name = channel_name(request.path_params["name"])
    # The queue before the cloud: a write leaves the queue only once the cloud stored it,
    # so a write missing from this snapshot is in the cloud's answer. A write in both is
    # applied twice, in order, which gives what applying it once gives. (Only a write
    # queued by someone else between the snapshot and the cloud's answer, to the same
    # keys, can make this one read older than it should be; the next read is right.)
    writes = await state.queue.pending(name)
    found, source = await state.reader().read(state.credentials, name)
    if found is None and not writes:
        if source == "cloud":
            raise NotFound(f"channel {name!r} does not exist")
        raise NoCopy(
            f"the cloud cannot be reached and the agent keeps no copy of channel {name!r} "
            "yet; it will once the cloud answers a read of it"
        )
    base = found or {}
    return JSONResponse(
        {
            "data": overlay(base.get("data"), writes),
            "attachments": base.get("attachments") or [],
            "last_updated": base.get("last_updated"),
            "source": source,
            "pending": len(writes),
        }
    )


async def patch_aggregate(request: Request) -> Response:
    state = state_of(request)
    name = channel_name(request.path_params["name"])
    body = await request.body()
    if len(body) > MAX_BODY:
        raise PayloadTooLarge(f"an aggregate patch may be at most {MAX_BODY} bytes")
    data = jsonish.parse_body(body)
    replace = request.query_params.get("replace") or None
    if replace is not None:
        split_path(replace)  # a bad path is the caller's 400 now, not the cloud's later
    await state.queue.put_patch(name, data, replace)
    return JSONResponse(
        {"queued": True, "channel": name, "pending": state.queue.count}, status_code=202
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
            Route("/v2/channels/{name:path}/aggregate", read_aggregate, methods=["GET"]),
            Route("/v2/channels/{name:path}/aggregate", patch_aggregate, methods=["PATCH"]),
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
        self.state = state
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
            await self.state.aclose()

    def close(self) -> None:
        self.server.should_exit = True
