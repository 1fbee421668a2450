"""An app worker: a child process that runs one app version's handler, one event at a time.

Started by the pool (``fleetcloud.apps.pool``) as ``python -m fleetcloud.apps.worker FD``,
where ``FD`` is its end of a socket pair that carries the protocol (``apps.protocol``).
Its standard output and error are a file the pool reads as each invocation's logs; the
pool truncates it before every invocation.

A worker starts generic — the SDK imported, an HTTP connection pool open — so that it can
be kept as a spare. ``load`` turns it into a worker of one app version: it caps the
address space at the app's ``MemorySize`` (``RLIMIT_AS``), puts the extracted package
first on ``sys.path`` (so ``src.my_processor.handler`` and the bundled dependencies
import; the platform's own ``fleetcloud`` is already loaded, so a copy bundled in the
package cannot replace the SDK the protocol needs), and imports the handler. ``invoke``
then calls ``handler(envelope, context)`` for each event; the context carries the data
API transport, which reuses the worker's connections across invocations.

Whatever the handler does — raise, ``sys.exit``, print anything — is reported in the
answer and the worker goes on. What it cannot survive (a segfault, ``os._exit``, a hang
past ``Timeout``) the pool sees as a dead or killed worker, and only that invocation
fails.
"""

from __future__ import annotations

import contextlib
import faulthandler
import http.client
import importlib
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from fleetcloud.apps.protocol import ProtocolError, receive, send
from fleetcloud.core import jsonish
from fleetcloud.sdk.codec import encode
from fleetcloud.sdk.errors import DataApiUnavailable
from fleetcloud.sdk.runner import InvocationContext
from fleetcloud.sdk.transport import HttpTransport, api_error

MB = 1024 * 1024
LOG_FILE_LIMIT = 8 * MB  # what one invocation may print (RLIMIT_FSIZE on the log file)
API_TIMEOUT = 30.0

Handler = Callable[[Any, Any], Any]


class Connection:
    """One keep-alive HTTP/1.1 connection to the data API, kept across invocations.

    ``run_app`` runs every invocation in a new event loop, and an asynchronous connection
    pool belongs to the loop that opened it; this connection does not, so a warm worker
    reuses it. Calls block the invocation's loop while they wait, which a worker that runs
    one event at a time can afford, and cost far less than an asynchronous client.
    """

    def __init__(self, api_url: str) -> None:
        parts = urlsplit(api_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.base = parts.path.rstrip("/")
        self._http: http.client.HTTPConnection | None = None

    def request(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        for reused in (self._http is not None, False):
            connection = self._http or self._open()
            try:
                connection.request(method, self.base + target, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                connection.close()
                self._http = None
                if not reused:  # a kept connection the server has closed: try a new one
                    raise
        raise AssertionError("unreachable")

    def _open(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        self._http = kind(self.host, self.port, timeout=API_TIMEOUT)
        return self._http


class WorkerTransport(HttpTransport):
    """The SDK's HTTP transport (paths, errors) over the worker's ``Connection``."""

    def __init__(
        self, api_url: str, token: str, connection: Connection, client: httpx.AsyncClient
    ) -> None:
        super().__init__(api_url, token, client=client)  # the client is never used
        self.connection = connection
        self.authorization = f"Bearer {token}"

    async def request(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        content = None if body is None else encode(body, "the request body")
        headers = {"Authorization": self.authorization}
        if content is not None:
            headers["Content-Type"] = "application/json"
        target = path + ("?" + urlencode(params) if params else "")
        try:
            status, payload = self.connection.request(method, target, content, headers)
        except (http.client.HTTPException, OSError) as exc:
            raise DataApiUnavailable(f"cannot reach the data API at {self.api_url}: {exc}") from exc
        if status >= 400:
            raise api_error(httpx.Response(status, content=payload))
        return jsonish.loads(payload) if payload else None


class Worker:
    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self.handler: Handler | None = None
        self.client = httpx.AsyncClient(trust_env=False)
        self.connections: dict[str, Connection] = {}

    def serve(self) -> None:
        while True:
            try:
                request = receive(self.channel)
            except ProtocolError:
                return  # the pool closed the channel: stop
            op = request.get("op")
            answer = self.load(request) if op == "load" else self.invoke(request)
            _flush()
            send(self.channel, answer)

    def load(self, request: dict[str, Any]) -> dict[str, Any]:
        limit_memory(int(request["memory_mb"]))
        root = str(request["root"])
        sys.path.insert(0, root)
        os.chdir(root)
        module_name, _, function = str(request["handler"]).rpartition(".")
        try:
            module = importlib.import_module(module_name)
            handler = getattr(module, function)
        except BaseException as exc:  # an app's import may raise anything, even SystemExit
            traceback.print_exc()
            return {"ok": False, "error": f"cannot load {request['handler']}: {_describe(exc)}"}
        if not callable(handler):
            return {"ok": False, "error": f"{request['handler']} is not a function"}
        self.handler = handler
        return {"ok": True}

    def invoke(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.handler is None:
            return {"ok": False, "error": "the worker has no app loaded"}
        envelope = request["envelope"]
        api_url = str(request["api_url"])
        token = envelope.get("d", {}).get("upgrade", {}).get("token") or envelope.get("token")
        connection = self.connections.get(api_url)
        if connection is None:
            connection = self.connections[api_url] = Connection(api_url)
        context = InvocationContext(
            api_url=api_url,
            transport=WorkerTransport(api_url, str(token), connection, self.client),
            invocation_id=str(request.get("invocation_id", "")),
        )
        error: BaseException | None = None
        started = time.time()
        clock = time.perf_counter()
        try:
            self.handler(envelope, context)
        except BaseException as exc:  # sys.exit and KeyboardInterrupt cost one invocation
            traceback.print_exc()
            error = exc
        duration = (time.perf_counter() - clock) * 1000
        summary = context.summary
        raised = error or context.error
        return {
            "ok": True,
            "started": started,
            "duration_ms": round(duration, 3),
            "summary": summary,
            "error": None if error is None else _describe(error),
            "memory_error": isinstance(raised, MemoryError),
        }


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def limit_memory(megabytes: int) -> None:
    """Cap the address space; allocations past it fail (``MemoryError`` in Python)."""
    size = megabytes * MB
    resource.setrlimit(resource.RLIMIT_AS, (size, size))


def main() -> None:
    channel = socket.socket(fileno=int(sys.argv[1]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when we stop
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the log limit, writes just fail
    resource.setrlimit(resource.RLIMIT_FSIZE, (LOG_FILE_LIMIT, LOG_FILE_LIMIT))
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    faulthandler.enable()  # a crash leaves its traceback in the invocation's logs
    Worker(channel).serve()


if __name__ == "__main__":
    main()
