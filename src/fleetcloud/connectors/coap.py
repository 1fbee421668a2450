"""The CoAP connector: a CoAP server devices talk to, for uplinks, acks and commands.

``fleetcloud serve --coap-bind HOST:PORT`` runs it. The resources and the command
envelope are in ``coap_wire.py``; every request is authenticated by the device key in
its ``?k=KEY`` query (4.01 without a valid one, 4.03 for a key that is not a device's).

Commands reach a device in two ways, both oldest first, one at a time:

- **riding a response** (sleepy devices): the response to any request of the device —
  an uplink, an ack, a poll — carries its oldest pending command. Handing it out records
  ``SENT`` (each hand-out is an attempt); the same command comes back in every response
  until the device acknowledges it on ``/ack`` (→ ``DELIVERED``/``SUCCEEDED``/``FAILED``),
  so the response to the ack carries the next one.
- **direct**: a device whose parser config has ``coap_url`` (its own CoAP server) is also
  sent its oldest pending command as a request to ``coap_url`` + ``metadata.path``
  (``/cmd`` by default), confirmable unless ``metadata.confirmable`` is false. The
  device's answer is its acknowledgement: 2.xx → ``DELIVERED``, 4.xx → ``FAILED`` with
  the code; no answer (or 5.xx) leaves it ``SENT`` and it is sent again after
  ``retry_interval``, doubling up to ``max_retry_interval``, until an ack or ``expires_at``.

Its tasks, all in one ``TaskGroup``: **commands** (consumes ``device_commands`` as group
``coap-connector``; new CoAP commands are recorded ``QUEUED`` before the group commits),
**uplinks** (writes the uplinks of many requests per ``store.publish``), **expiry**
(pending commands past ``expires_at`` → ``EXPIRED``), **reconcile** (every few seconds,
starts direct delivery for devices with pending commands — also what restarts it after
a server restart), and one task per direct device with work. Nothing is kept only in
memory: what is pending is read from the store, so a restart loses no command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import aiocoap.error  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
import orjson
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

from fleetcloud.commands import lifecycle
from fleetcloud.commands.core.models import PENDING, CommandMessage, CommandStatus, InvalidCommand
from fleetcloud.commands.delivery import DeviceSettings
from fleetcloud.commands.lifecycle import Change, StoredCommand
from fleetcloud.commands.runner import ParserError
from fleetcloud.commands.service import command_topic_from_env
from fleetcloud.connectors import coap_wire as wire
from fleetcloud.connectors.base import Connector
from fleetcloud.core.errors import (
    ApiError,
    BadRequest,
    BusError,
    ConfigError,
    FleetError,
    Forbidden,
    NotFound,
    Unauthorized,
)
from fleetcloud.core.types import Event
from fleetcloud.platform import Platform
from fleetcloud.store.agents import now_ms
from fleetcloud.store.channels import PublishItem
from fleetcloud.store.ops import Fetch, Work

log = logging.getLogger("fleetcloud.connectors.coap")

PROTOCOL = "coap"
GROUP = "coap-connector"
OCTET_STREAM = 42  # CoAP content-format application/octet-stream
HANDOUT_SKIPS = 50  # commands that end (FAILED/EXPIRED) while looking for one to hand out
FORMATTED_MEMORY = 10_000  # formatted command bytes kept for repeated hand-outs
UPLINK_BATCH = 2_000
COMMIT_INTERVAL = 0.2
COAP_CODES = {  # an ApiError's HTTP status → the CoAP response code
    400: Code.BAD_REQUEST,
    401: Code.UNAUTHORIZED,
    403: Code.FORBIDDEN,
    404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED,
    409: Code.CONFLICT,
    413: Code.REQUEST_ENTITY_TOO_LARGE,
    422: Code.BAD_REQUEST,
    429: Code.TOO_MANY_REQUESTS,
}
METHODS = {
    "uplink": (Code.POST, Code.PUT),
    "ack": (Code.POST, Code.PUT),
    "poll": (Code.GET,),
}


class MethodNotAllowed(ApiError):
    status = 405


@dataclass
class CoapOptions:
    bind: str
    command_topic: str = field(default_factory=command_topic_from_env)
    group: str = GROUP
    direct_timeout: float = 30.0  # how long a direct request waits for the device's answer
    retry_interval: float = 10.0  # first resend of an unanswered direct command
    max_retry_interval: float = 120.0
    expiry_interval: float = 1.0
    reconcile_interval: float = 5.0
    parser_workers: int = 2
    parser_time_limit: float = 2.0
    parsers_dir: str | None = None


@dataclass(eq=False)
class Direct:
    """A device with a ``coap_url`` that has commands to send it."""

    agent_id: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # send (again) now
    more: bool = False  # a command arrived while its task looked for one


@dataclass(slots=True)
class _Uplink:
    item: PublishItem
    done: asyncio.Future[str | None]  # the publish error, or None


class _Site(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    """The root resource: every request goes to the connector, with its whole path."""

    def __init__(self, connector: CoapConnector) -> None:
        super().__init__()
        self.connector = connector

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self.connector.render(request)


def pending_devices(after: int = 0, limit: int = 500) -> Work[list[tuple[int, bool]]]:
    """Devices with CoAP commands pending, by id, after ``after``: ``(agent_id, whether
    its settings mention a coap_url)`` (a cheap first cut; the settings decide)."""
    rows = yield Fetch(
        "SELECT DISTINCT c.agent_id, CASE WHEN d.config LIKE ? THEN 1 ELSE 0 END "
        "FROM commands c LEFT JOIN command_devices d ON d.agent_id = c.agent_id "
        "WHERE c.protocol = ? AND c.status IN (?, ?) AND c.agent_id > ? "
        "ORDER BY c.agent_id LIMIT ?",
        (f'%"{wire.URL_SETTING}"%', PROTOCOL, *PENDING, after, limit),
    )
    return [(int(agent_id), bool(direct)) for agent_id, direct in rows]


class CoapConnector(Connector):
    """``async with CoapConnector(platform, CoapOptions(bind=...)):`` — see the module doc."""

    label = "CoAP connector"

    def __init__(self, platform: Platform, options: CoapOptions) -> None:
        super().__init__(platform, options)
        self.options = options
        self.host, self.port = wire.bind_address(options.bind)
        self.context: Any = None  # the aiocoap server context
        self.direct: dict[int, Direct] = {}
        # Devices that may have pending CoAP commands (→ a version, bumped when one comes):
        # a request from any other device needs no look at the store for a command.
        self.pending: dict[int, int] = {}
        self._version = 0
        self.loaded = asyncio.Event()  # consuming the bus, caught up
        self._formatted: OrderedDict[str, bytes] = OrderedDict()
        self._uplinks: list[_Uplink] = []
        self._uplinks_ready = asyncio.Event()
        self.uplinks = 0  # channel messages written from uplinks
        self.refused = 0  # requests answered with an error

    # ------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        await self._open()
        self._spawn(self._uplink_loop(), "coap-uplinks")
        await self.scan()  # before the first request: what is pending from before
        try:
            self.context = await aiocoap.Context.create_server_context(
                _Site(self), bind=(self.host, self.port), transports=["udp6"]
            )
        except OSError as exc:
            raise ConfigError(f"cannot serve CoAP on {self.options.bind}: {exc}") from exc
        log.info("CoAP connector listening on %s", self.options.bind)
        self._spawn(self._commands_loop(), "coap-commands")
        self._spawn(self._expiry_loop(), "coap-expiry")
        self._spawn(self._reconcile_loop(), "coap-reconcile")

    async def __aexit__(self, *exc_info: object) -> None:
        if self.context is not None:
            with contextlib.suppress(Exception):  # aiocoap's own shutdown errors
                await self.context.shutdown()
            self.context = None
        await self._stop_tasks()
        for uplink in self._uplinks:
            if not uplink.done.done():
                uplink.done.set_exception(FleetError("the CoAP connector stopped"))
        self._uplinks.clear()
        await self._stack.aclose()

    # ------------------------------------------------------------ requests

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        """Answer one device request; a fleetcloud error becomes a 4.xx/5.xx with its
        message, anything else a 5.00 (logged) — never a crash of the server."""
        try:
            return await self._answer(request)
        except ApiError as exc:
            self.refused += 1
            code = COAP_CODES.get(exc.status, Code.BAD_REQUEST)
            return aiocoap.Message(code=code, payload=exc.message.encode())
        except FleetError as exc:
            self.refused += 1
            log.warning("CoAP request failed: %s", exc.message)
            return aiocoap.Message(code=Code.SERVICE_UNAVAILABLE, payload=exc.message.encode())
        except Exception:
            self.refused += 1
            log.exception("CoAP request failed")
            return aiocoap.Message(code=Code.INTERNAL_SERVER_ERROR, payload=b"internal error")

    async def _answer(self, request: aiocoap.Message) -> aiocoap.Message:
        target = wire.parse_path(request.opt.uri_path)
        if request.code not in METHODS[target.kind]:
            allowed = ", ".join(str(m) for m in METHODS[target.kind])
            raise MethodNotAllowed(f"{request.code} is not allowed here: use {allowed}")
        device = await self.authenticate(request.opt.uri_query)
        if target.kind == "uplink":
            await self._uplink(device, target.channel, request)
        elif target.kind == "ack":
            await self._ack(device, request)
        payload = await self.handout(device)
        code = Code.CONTENT if target.kind == "poll" else Code.CHANGED
        if not payload:
            return aiocoap.Message(code=code)
        return aiocoap.Message(code=code, payload=payload, content_format=OCTET_STREAM)

    async def authenticate(self, queries: Sequence[str]) -> DeviceSettings:
        """The device whose key the request carries (``?k=KEY``)."""
        key = wire.device_key(queries)
        if key is None:
            raise Unauthorized("send the device key as the URI query k=KEY")
        principal = await self.platform.auth.principal(key)
        device = await self.settings.get(principal.agent_id)
        if device is None:
            raise Forbidden("only a device's own key may be used over CoAP")
        return device

    async def _uplink(self, device: DeviceSettings, channel: str, request: aiocoap.Message) -> None:
        value = await self._decode(device, request, "uplink", channel)
        if not isinstance(value, dict | list | str | int | float | bool):
            raise BadRequest("an uplink is a JSON value, not null")
        done = asyncio.get_running_loop().create_future()
        item = PublishItem(device.agent_id, channel, value, device.agent_id)
        self._uplinks.append(_Uplink(item, done))
        self._uplinks_ready.set()
        error = await done
        if error is not None:
            raise BadRequest(error)

    async def _decode(
        self, device: DeviceSettings, request: aiocoap.Message, kind: str, channel: str = ""
    ) -> Any:
        """The payload's JSON value: as it is, unless the device has a parser (uplinks
        always go through it; acks only when they are not JSON)."""
        payload = bytes(request.payload)
        if device.parser_script_ref is None or kind == "ack":
            try:
                return orjson.loads(payload)
            except orjson.JSONDecodeError:
                if device.parser_script_ref is None:
                    raise BadRequest(
                        "the payload is not JSON (and the device has no uplink parser)"
                    ) from None
        metadata = {
            "path": "/" + "/".join(request.opt.uri_path),
            "kind": kind,
            "channel": channel,
            "agent_id": str(device.agent_id),
            "method": str(request.code),
            "confirmable": request.mtype == aiocoap.CON,
        }
        try:
            return await self.delivery.parse_uplink(device, payload, metadata)
        except ParserError as exc:
            raise BadRequest(exc.message) from None

    async def _ack(self, device: DeviceSettings, request: aiocoap.Message) -> None:
        ack = wire.ack_from(await self._decode(device, request, "ack"))
        change = Change(ack.request_id, ack.status, ack.reason, agent_id=device.agent_id)
        moved = (await self.tracker.apply([change])).get(ack.request_id)
        if moved is None or moved.status is not ack.status:  # refused (or another's change)
            command = await self.store.read(lifecycle.get(ack.request_id))
            if command is None or command.agent_id != device.agent_id:
                raise NotFound(f"no command {ack.request_id!r} for this device")
        self._forget(ack.request_id)
        direct = self.direct.get(device.agent_id)
        if direct is not None:
            direct.wake.set()  # its task moves on to the next command

    # ------------------------------------------------------------ handing commands out

    async def handout(self, device: DeviceSettings) -> bytes:
        """The envelope of the device's oldest pending command (recorded ``SENT``), or
        b"" if it has none."""
        version = self.pending.get(device.agent_id)
        if version is None:
            return b""
        for _ in range(HANDOUT_SKIPS):
            command = await self.head(device.agent_id)
            if command is None:
                if self.pending.get(device.agent_id) == version:  # none came meanwhile
                    del self.pending[device.agent_id]
                return b""
            data = await self._formatted_bytes(command)
            if data is not None:
                self.delivery.record_sent(command, delivered=False)
                return wire.envelope(command.request_id, data)
        return b""  # many ended on the way: the next request goes on

    async def head(self, agent_id: int) -> StoredCommand | None:
        found = await self.store.read(lifecycle.pending_for_device(agent_id, PROTOCOL, limit=1))
        return found[0] if found else None

    async def _formatted_bytes(self, command: StoredCommand) -> bytes | None:
        """The parser's bytes for ``command`` (formatted once, then remembered), or None
        once it has ended (``EXPIRED``, or ``FAILED`` with the parser's reason)."""
        data = self._formatted.get(command.request_id)
        if data is not None:
            if await self.delivery.expire_if_due(command):
                self._forget(command.request_id)
                return None
            return data
        data = await self.delivery.prepare(command)
        if data is not None:
            self._formatted[command.request_id] = data
            while len(self._formatted) > FORMATTED_MEMORY:
                self._formatted.popitem(last=False)
        return data

    def _forget(self, request_id: str) -> None:
        self._formatted.pop(request_id, None)

    # ------------------------------------------------------------ uplink writes

    async def _uplink_loop(self) -> None:
        while True:
            await self._uplinks_ready.wait()
            self._uplinks_ready.clear()
            while self._uplinks:
                batch = self._uplinks[:UPLINK_BATCH]
                del self._uplinks[:UPLINK_BATCH]
                try:
                    results = await self.store.publish([u.item for u in batch])
                except Exception as exc:  # their requests get the error; the loop goes on
                    if not isinstance(exc, FleetError):
                        log.exception("storing %d uplinks failed", len(batch))
                    for uplink in batch:
                        if not uplink.done.done():
                            uplink.done.set_exception(exc)
                    continue
                for uplink, result in zip(batch, results, strict=True):
                    if not uplink.done.done():
                        uplink.done.set_result(result.error)
                self.uplinks += sum(1 for r in results if r.success)

    # ------------------------------------------------------------ commands in

    async def _consume(self) -> None:
        subscription = await self.platform.bus.subscribe(
            [self.options.command_topic], self.options.group, from_beginning=True
        )
        async with subscription:
            while events := await subscription.next_batch(timeout=0):  # catch up first
                await self.take(events)
                await subscription.commit()
            self.loaded.set()
            while True:
                events = await subscription.next_batch(timeout=COMMIT_INTERVAL)
                if events:
                    await self.take(events)
                    await subscription.commit()
                elif getattr(subscription, "closed", False):
                    raise BusError(f"the subscription to {self.options.command_topic} closed")
                await asyncio.sleep(0)

    async def take(self, events: Sequence[Event]) -> None:
        """Record the new CoAP commands among ``events`` (idempotently) and start direct
        delivery for their devices; commands of other protocols are not this one's."""
        ids = [e.value.get("request_id") for e in events]
        existing = await self.store.read(lifecycle.load(i for i in ids if isinstance(i, str)))
        fresh: dict[str, CommandMessage] = {}
        devices: set[int] = set()
        for event, request_id in zip(events, ids, strict=True):
            if isinstance(request_id, str) and request_id in existing:
                command = existing[request_id]
                if command.protocol == PROTOCOL and command.agent_id is not None:
                    devices.add(command.agent_id)
                continue
            message = self._valid(event)
            if message is not None and message.protocol == PROTOCOL:
                fresh[message.request_id] = message
        if fresh:
            recorded = await self.tracker.record_soon(list(fresh.values()))
            devices.update(c.agent_id for c in recorded if c.agent_id is not None)
        self.note_pending(devices)
        await self.wake(devices)

    def note_pending(self, agent_ids: Iterable[int]) -> None:
        """Those devices may have pending commands: look for them at their next request."""
        for agent_id in agent_ids:
            self._version += 1
            self.pending[agent_id] = self._version

    def _valid(self, event: Event) -> CommandMessage | None:
        try:
            return CommandMessage.from_dict(event.value)
        except InvalidCommand as exc:
            log.warning("dropping an invalid command from the bus: %s", exc.message)
            return None

    # ------------------------------------------------------------ direct delivery

    async def wake(self, agent_ids: Iterable[int]) -> None:
        """Start direct delivery for those devices that have a ``coap_url`` (a device
        already being served goes on in its own time)."""
        wanted = set(agent_ids)
        if not wanted:
            return
        for agent_id in wanted & self.direct.keys():
            self.direct[agent_id].more = True
        settings = await self.settings.get_many(wanted - self.direct.keys())
        for agent_id, device in settings.items():
            if _coap_url(device) is not None and agent_id not in self.direct:
                direct = self.direct[agent_id] = Direct(agent_id)
                self._spawn(self._direct_loop(direct), f"coap-direct-{agent_id}")

    async def _direct_loop(self, direct: Direct) -> None:
        wait = self.options.retry_interval
        try:
            while True:
                direct.wake.clear()
                direct.more = False
                try:
                    answered = await self._direct_once(direct.agent_id)
                except FleetError as exc:  # the store failed: try again shortly
                    log.warning("direct delivery to %d failed: %s", direct.agent_id, exc.message)
                    answered = False
                except Exception:  # a bug must not stop the connector: log it, retry later
                    log.exception("direct delivery to %d failed", direct.agent_id)
                    answered = False
                if answered is None:
                    if direct.more or direct.wake.is_set():
                        continue  # something arrived while it looked
                    return
                if answered:
                    wait = self.options.retry_interval
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(direct.wake.wait(), wait)
                wait = min(wait * 2, self.options.max_retry_interval)
        finally:
            self.direct.pop(direct.agent_id, None)

    async def _direct_once(self, agent_id: int) -> bool | None:
        """Send the device's oldest pending command to its own server: True if that
        settled it (an answer, or it ended), False if it waits for a resend, None if
        there is nothing (more) to send directly."""
        device = await self.settings.get(agent_id)
        url = _coap_url(device)
        command = await self.head(agent_id) if url is not None else None
        if command is None or url is None:
            return None
        uri = wire.direct_uri(url, command.metadata.get("path"))
        if uri is None:
            log.warning("device %d: coap_url %r is not a coap:// URL", agent_id, url)
            return None
        data = await self._formatted_bytes(command)
        if data is None:
            return True
        confirmable = command.metadata.get("confirmable", True) is not False
        self.delivery.record_sent(command, delivered=False)
        response = await self._request(uri, wire.envelope(command.request_id, data), confirmable)
        if response is None:
            return False
        return await self._answered(command, response)

    async def _request(self, uri: str, payload: bytes, confirmable: bool) -> Any:
        """POST ``payload`` to ``uri``; the response, or None if none came in time."""
        message = aiocoap.Message(
            code=Code.POST,
            uri=uri,
            transport_tuning=aiocoap.Reliable() if confirmable else aiocoap.Unreliable(),
            payload=payload,
            content_format=OCTET_STREAM,
        )
        try:
            request = self.context.request(message)
            return await asyncio.wait_for(request.response, self.options.direct_timeout)
        except TimeoutError:
            log.info("no answer from %s within %s s", uri, self.options.direct_timeout)
        except aiocoap.error.Error as exc:
            log.info("sending to %s failed: %s", uri, exc)
        return None

    async def _answered(self, command: StoredCommand, response: Any) -> bool:
        """Record what the device's answer says; False if it asks for a resend (5.xx)."""
        code = response.code
        text = bytes(response.payload)[:200].decode(errors="replace")
        said = f"{code.dotted} {code.name_printable}" + (f": {text}" if text else "")
        if code.is_successful():
            change = Change(command.request_id, CommandStatus.DELIVERED, f"device answered {said}")
        elif code.class_ == 4:
            change = Change(command.request_id, CommandStatus.FAILED, f"device refused it: {said}")
        else:
            log.info("device %s answered %s: sending again later", command.device_id, said)
            return False
        await self.tracker.apply([change])
        self._forget(command.request_id)
        return True

    # ------------------------------------------------------------ expiry and reconcile

    async def _expiry_loop(self) -> None:
        while True:
            try:
                expired = await self.store.write(lifecycle.expire_due(now_ms()))
            except FleetError as exc:
                log.warning("expiry sweep failed: %s", exc.message)
                expired = {}
            for request_id, command in expired.items():
                self._forget(request_id)
                direct = self.direct.get(command.agent_id or 0)
                if direct is not None:
                    direct.wake.set()
            await asyncio.sleep(self.options.expiry_interval)

    async def scan(self) -> None:
        """Note every device with pending CoAP commands, and start direct delivery for
        those with a ``coap_url`` — at start (what was pending before a restart) and
        every ``reconcile_interval`` (a safety net for a bus event that did not come)."""
        after = 0
        while page := await self.store.read(pending_devices(after)):
            self.note_pending(agent_id for agent_id, _ in page)
            await self.wake(agent_id for agent_id, direct in page if direct)
            after = page[-1][0]

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.reconcile_interval)
            try:
                await self.scan()
            except FleetError as exc:
                log.warning("reconciling pending commands failed: %s", exc.message)


def _coap_url(device: DeviceSettings | None) -> str | None:
    url = None if device is None else device.config.get(wire.URL_SETTING)
    return url if isinstance(url, str) and url else None


def coap_service(options: CoapOptions) -> Any:
    """A ``create_app`` service factory: ``services=[coap_service(CoapOptions(bind))]``."""

    def start(platform: Platform) -> CoapConnector:
        return CoapConnector(platform, options)

    return start


def coap_service_from_options(coap_bind: str | None, parsers_dir: str | None) -> Any:
    """The CoAP connector service for ``fleetcloud serve``, or None without --coap-bind."""
    if not coap_bind:
        return None
    wire.bind_address(coap_bind)  # a bad address is a usage error now, not at start-up
    return coap_service(CoapOptions(coap_bind, parsers_dir=parsers_dir))
