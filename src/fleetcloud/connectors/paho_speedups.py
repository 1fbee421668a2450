"""Speed-ups for the connector's paho-mqtt client (its uplink and command hot paths).

paho reads every packet with at least three ``recv`` calls (the command byte, the length
bytes one by one, the body), builds an ``MQTTMessage`` for each publish, and aiomqtt then
wraps that in its own ``Message`` (checking the topic again) and passes it through an
``asyncio.Queue``. At tens of thousands of small uplinks a second that is most of the
connector's time. ``Reader`` takes over the reading side of one connected client:

- one ``recv`` of up to 64 KiB serves many packets, and a readable event handles every
  complete packet in it (a few hundred at most through paho, then it reschedules itself,
  so other tasks still run);
- complete QoS 0 ``PUBLISH`` packets at the front of that buffer are parsed here (fixed
  header, topic, payload: MQTT 3.1.1 §3.3) and handed to ``deliver`` at once, and so are
  ``PUBACK``s (§3.4), the broker's answers to the connector's QoS 1 command publishes:
  they settle the publish as paho would, without the reason-code and properties objects
  paho builds for each; everything else (QoS 1 and 2 publishes, other acknowledgements,
  pings) goes through paho as before, and paho's ``on_message`` calls the same
  ``deliver``, so messages keep their arrival order;
- ``pause`` stops reading the socket (the broker then holds what comes, or drops QoS 0
  messages past its limits) and ``resume`` starts again: the connector's backpressure.

``Publisher`` takes over the publishing side: a command's publish is paho's ``publish``
and one future settled by paho's ``on_publish``, instead of an aiomqtt coroutine with an
event, a task and a timer for each message.

``skip_topic_filters`` replaces the client's per-topic callback table, which paho walks
for every message, with an empty one, when nothing is registered in it (the connector
never registers per-topic callbacks).

They touch the instances only when they are what this module expects (paho 2.x with MQTT
3.1.1 over plain TCP, aiomqtt 2.x); otherwise they leave the client alone and say so.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fleetcloud.connectors.mqtt")

READ_SIZE = 65_536
PACKETS_PER_EVENT = 500
SUCCESS = 0  # paho's MQTTErrorCode values
AGAIN = -1
NO_CONNECTION = 4
MQTT_V5 = 5
PUBLISH_QOS0 = 0x30  # a PUBLISH's first byte: type 3 in the high nibble, QoS in bits 1-2
TYPE_AND_QOS = 0xF6  # … ignoring the dup (0x08) and retain (0x01) flags
PUBACK = 0x40  # a PUBACK's first byte; its remaining length is 2 in MQTT 3.1.1

Deliver = Callable[[str, bytes, int, bool], None]
"""``deliver(topic, payload, qos, retain)``: one message from the broker."""
Acknowledge = Callable[[int], bool]
"""``acknowledge(packet_id)``: the broker has a QoS 1 publish; False stops the reading."""


class _NoFilters:
    """An empty topic-filter table that costs nothing to search."""

    def iter_match(self, topic: str) -> tuple[()]:
        return ()

    def __setitem__(self, key: str, value: object) -> None:
        raise RuntimeError("per-topic callbacks are not used on this client")


def skip_topic_filters(paho: Any) -> bool:
    table = getattr(paho, "_on_message_filtered", None)
    root = getattr(table, "_root", None)
    if root is None or getattr(root, "_children", None) or getattr(root, "_content", None):
        return False
    paho._on_message_filtered = _NoFilters()
    return True


def take_publishes(
    buffer: bytearray, deliver: Deliver, acknowledge: Acknowledge | None = None
) -> int:
    """Deliver the complete QoS 0 PUBLISH packets at the start of ``buffer`` (MQTT 3.1.1)
    — and, given ``acknowledge``, hand it the packet identifier of each complete PUBACK —
    and return how many bytes they took; stops at the first packet that is anything
    else, incomplete, or malformed (paho deals with it), and after an acknowledgement
    that returns False. A topic that is not UTF-8 is delivered as ``""``, which no
    subscription matches."""
    position, end = 0, len(buffer)
    while position < end:
        first = buffer[position]
        if first == PUBACK and acknowledge is not None:
            if position + 4 > end or buffer[position + 1] != 2:
                break
            position += 4
            if not acknowledge((buffer[position - 2] << 8) | buffer[position - 1]):
                break
            continue
        if first & TYPE_AND_QOS != PUBLISH_QOS0:
            break
        length, multiplier, index = 0, 1, position + 1
        while index < end and index - position <= 4:
            byte = buffer[index]
            index += 1
            length += (byte & 0x7F) * multiplier
            multiplier <<= 7
            if byte < 0x80:
                break
        else:
            break  # the length is cut off here, or longer than four bytes
        stop = index + length
        if stop > end or length < 2:
            break
        topic_end = index + 2 + ((buffer[index] << 8) | buffer[index + 1])
        if topic_end > stop:
            break
        try:
            topic = buffer[index + 2 : topic_end].decode()
        except UnicodeDecodeError:
            topic = ""
        deliver(topic, bytes(buffer[topic_end:stop]), 0, bool(first & 0x01))
        position = stop
    return position


class Reader:
    """The reading side of one connected aiomqtt client (see the module doc)."""

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        self.client = client
        self.paho = client._client
        self.loop = loop
        self.deliver = deliver
        self.buffer = bytearray()
        self.sock: Any = None
        self.paused = False
        self.pauses = 0  # times reading paused for backpressure
        self.acknowledged = 0  # PUBACKs taken here (not through paho)
        self._ack_failure = 0  # what settling an acknowledged publish returned, if not 0
        self._ack_reason: Any = None  # paho's "success" reason code and empty properties,
        self._ack_properties: Any = None  # … made once, passed with every PUBACK

    def install(self) -> bool:
        """Take over reading; False (and the client untouched) if it is not as expected."""
        paho, sock = self.paho, getattr(self.paho, "_sock", None)
        needed = (
            "_packet_read", "_loop_rc_handle", "_sock_recv", "loop_read", "_in_packet",
            "_out_messages", "_out_message_mutex", "_do_on_publish",
        )  # fmt: skip
        if (
            sock is None
            or isinstance(sock, ssl.SSLSocket)
            or getattr(paho, "_protocol", MQTT_V5) == MQTT_V5
            or not all(hasattr(paho, name) for name in needed)
            or not isinstance(getattr(self.client, "_disconnected", None), asyncio.Future)
        ):
            log.info("MQTT client: reading through paho (no speed-ups for this client)")
            return False
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.reasoncodes import ReasonCode

        self._ack_reason = ReasonCode(PacketTypes.PUBACK)
        self._ack_properties = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
        self.sock = sock
        paho._sock_recv = self._sock_recv
        paho.loop_read = self._loop_read
        paho.on_message = self._on_message
        self.loop.remove_reader(sock.fileno())  # aiomqtt's reader, replaced by ours
        self.loop.add_reader(sock.fileno(), self._readable)
        return True

    def pause(self) -> None:
        if self.paused:
            return
        if self._current():
            self.loop.remove_reader(self.sock.fileno())
        self.paused = True
        self.pauses += 1

    def resume(self) -> None:
        if self.paused and self._current():
            self.loop.add_reader(self.sock.fileno(), self._readable)
            self.loop.call_soon(self._readable)  # what the buffer already holds
        self.paused = False

    def _current(self) -> bool:
        """Whether the socket we read is still the client's (not closed or replaced)."""
        return self.sock is not None and self.paho._sock is self.sock

    def _acknowledge(self, packet_id: int) -> bool:
        """What paho does with a PUBACK for MQTT 3.1.1 (``_handle_pubackcomp``)."""
        paho = self.paho
        self.acknowledged += 1
        with paho._out_message_mutex:
            if packet_id not in paho._out_messages:
                return True  # not ours, or settled already
            failure: int = paho._do_on_publish(packet_id, self._ack_reason, self._ack_properties)
        self._ack_failure = failure
        return not failure

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.deliver(message.topic, message.payload, message.qos, bool(message.retain))

    def _readable(self) -> None:
        # As aiomqtt's own reader: an error here means the connection is gone.
        try:
            self._loop_read()
        except Exception as exc:  # handed to the client, which reports it
            if not self.client._disconnected.done():
                self.client._disconnected.set_exception(exc)

    def _sock_recv(self, size: int) -> bytes:
        buffer = self.buffer
        if not buffer:
            current = self.paho._sock
            if current is None:
                raise ConnectionError("the socket is closed")
            data = current.recv(READ_SIZE)  # raises BlockingIOError when there is none
            if not data:
                return b""
            buffer.extend(data)
        chunk = bytes(buffer[:size])
        del buffer[:size]
        return chunk

    def _fill(self) -> bool:
        """Read the socket into the empty buffer; False if nothing has come yet."""
        try:
            self.buffer.extend(self.paho._sock.recv(READ_SIZE))
        except BlockingIOError:
            return False
        except OSError:
            pass  # paho's own read meets it and reports it
        return True

    def _take(self) -> int | None:
        """Take the packets at the front of the buffer that are read here: None if there
        are none, else SUCCESS or what paho made of a failed acknowledgement."""
        taken = take_publishes(self.buffer, self.deliver, self._acknowledge)
        if not taken:
            return None
        del self.buffer[:taken]
        self.paho._last_bytes_received = time.monotonic()
        if self._ack_failure:
            failure, self._ack_failure = self._ack_failure, 0
            return int(self.paho._loop_rc_handle(failure))
        return SUCCESS

    def _loop_read(self, max_packets: int = 1) -> int:
        paho, buffer = self.paho, self.buffer
        for _ in range(PACKETS_PER_EVENT):
            if self.paused:
                return SUCCESS
            if paho._sock is None:
                return NO_CONNECTION
            if paho._in_packet["command"] == 0:  # between packets
                if not buffer and not self._fill():
                    return SUCCESS
                outcome = self._take()
                if outcome is not None:
                    if outcome != SUCCESS:
                        return outcome
                    continue
            rc = paho._packet_read()
            if rc > 0:
                result: int = paho._loop_rc_handle(rc)
                return result
            if rc == AGAIN and not buffer:
                return SUCCESS
        if buffer:  # more complete packets wait in the buffer: come back soon
            self.loop.call_soon(self._readable)
        return SUCCESS


class Publisher:
    """Publishes on one connected aiomqtt client, each settled by a future of its own.

    aiomqtt's ``publish`` is a coroutine that, for every QoS 1 message, makes an
    ``asyncio.Event``, registers it and waits for it under ``asyncio.wait_for`` (a task
    and a timer each); the connector then needs a task of its own to keep several
    publishes in flight. Here a publish is paho's ``publish`` and one future, settled by
    paho's ``on_publish`` — the PUBACK, or for QoS 0 the write — whichever path (``Reader``
    or paho) read the acknowledgement. There is no time limit per publish: the caller
    bounds its wait. A connection's publisher goes with it; futures still waiting when
    the connection is lost are the caller's to give up (it waits on the loss too)."""

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.paho = client._client
        self.loop = loop
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self._passed_on: Callable[..., None] | None = None

    def install(self) -> bool:
        """Take over ``on_publish``; False (and the client untouched) if it is not as
        expected."""
        passed_on = getattr(self.paho, "on_publish", None)
        if not callable(passed_on) or not callable(getattr(self.paho, "publish", None)):
            log.info("MQTT client: publishing through aiomqtt")
            return False
        self._passed_on = passed_on  # aiomqtt's, for publishes made through it
        self.paho.on_publish = self._on_publish
        return True

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()
        try:
            info = self.paho.publish(topic, payload, qos, retain)
        except ValueError as exc:  # a topic or payload MQTT cannot carry
            future.set_exception(exc)
            return future
        if info.rc != SUCCESS:
            from aiomqtt import MqttCodeError

            future.set_exception(MqttCodeError(info.rc, "Could not publish message"))
        elif info.is_published():  # QoS 0, written already (on_publish came first)
            future.set_result(None)
        else:
            self.waiting[info.mid] = future
        return future

    def _on_publish(self, client: Any, userdata: Any, mid: int, *settled: Any) -> None:
        future = self.waiting.pop(mid, None)
        if future is None:
            if self._passed_on is not None:
                self._passed_on(client, userdata, mid, *settled)
        elif not future.done():
            future.set_result(None)
