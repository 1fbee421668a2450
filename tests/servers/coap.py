"""CoAP peers for the tests: free UDP ports, a device's own CoAP server (aiocoap), and
the third-party client ``coap-client-notls`` (Debian's libcoap3-bin) as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap.numbers.codes import Code

COAP_CLIENT = "/usr/bin/coap-client-notls"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def coap_client_binary() -> str:
    found = shutil.which("coap-client-notls") or COAP_CLIENT
    if not shutil.which(found):
        raise RuntimeError("coap-client-notls is not installed: apt-get install libcoap3-bin")
    return found


async def coap_client(*args: str, timeout: float = 30.0) -> tuple[bytes, bytes]:
    """Run ``coap-client-notls ARGS``; returns (stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        coap_client_binary(),
        "-B",
        "10",  # give up after 10 s rather than libcoap's 90
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode(errors="replace")
    return out, err


@dataclass(slots=True)
class Received:
    path: tuple[str, ...]
    confirmable: bool
    payload: bytes


@dataclass(eq=False)
class DeviceServer:
    """A device's own CoAP server: records every request and answers with ``code``."""

    port: int = field(default_factory=free_udp_port)
    code: Any = Code.CHANGED
    answer: bytes = b""
    received: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    context: Any = None

    @property
    def url(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    async def next(self, timeout: float = 30.0) -> Received:
        return await asyncio.wait_for(self.received.get(), timeout)


class _DeviceSite(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    def __init__(self, device: DeviceServer) -> None:
        super().__init__()
        self.device = device

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        received = Received(
            tuple(request.opt.uri_path), request.mtype == aiocoap.CON, bytes(request.payload)
        )
        self.device.received.put_nowait(received)
        return aiocoap.Message(code=self.device.code, payload=self.device.answer)


@contextlib.asynccontextmanager
async def device_server(device: DeviceServer | None = None) -> AsyncIterator[DeviceServer]:
    device = device or DeviceServer()
    device.context = await aiocoap.Context.create_server_context(
        _DeviceSite(device), bind=("127.0.0.1", device.port), transports=["udp6"]
    )
    try:
        yield device
    finally:
        await device.context.shutdown()
        device.context = None
