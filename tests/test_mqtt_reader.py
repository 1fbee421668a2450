"""The connector's own reading of QoS 0 PUBLISH and of PUBACK packets
(``paho_speedups.take_publishes``), on packets built byte by byte from MQTT 3.1.1 §2.2,
§3.3 and §3.4; what it does on a real broker is in ``test_mqtt.py``."""

from __future__ import annotations

import struct

import pytest

from fleetcloud.connectors.paho_speedups import take_publishes


def remaining_length(value: int) -> bytes:
    """The fixed header's variable-length encoding (§2.2.3)."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def publish(topic: bytes, payload: bytes, *, qos: int = 0, retain: bool = False) -> bytes:
    body = struct.pack(">H", len(topic)) + topic
    if qos:
        body += struct.pack(">H", 7)  # packet identifier
    body += payload
    first = 0x30 | (qos << 1) | int(retain)
    return bytes([first]) + remaining_length(len(body)) + body


def take(data: bytes) -> tuple[int, list[tuple[str, bytes, int, bool]]]:
    got: list[tuple[str, bytes, int, bool]] = []
    taken = take_publishes(bytearray(data), lambda *message: got.append(message))
    return taken, got


def test_complete_qos0_publishes_are_delivered_in_order() -> None:
    packets = [
        publish(b"fleetcloud/1/channels/a", b'{"n":1}'),
        publish(b"fleetcloud/1/channels/a", b"x" * 200, retain=True),  # two length bytes
        publish(b"fleetcloud/1/channels/b", b"y" * 20_000),  # three length bytes
        publish(b"fleetcloud/1/channels/a", b""),  # an empty payload
    ]
    taken, got = take(b"".join(packets))
    assert taken == sum(len(p) for p in packets)
    assert got == [
        ("fleetcloud/1/channels/a", b'{"n":1}', 0, False),
        ("fleetcloud/1/channels/a", b"x" * 200, 0, True),
        ("fleetcloud/1/channels/b", b"y" * 20_000, 0, False),
        ("fleetcloud/1/channels/a", b"", 0, False),
    ]


@pytest.mark.parametrize(
    "stop",
    [
        publish(b"t", b"qos 1", qos=1),  # paho acknowledges these
        publish(b"t", b"qos 2", qos=2),
        bytes([0x40, 0x02, 0x00, 0x07]),  # a PUBACK
        bytes([0xD0, 0x00]),  # a PINGRESP
        publish(b"t", b"cut off")[:-1],  # incomplete
        bytes([0x30]),  # the length not there yet
        bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # a length of more than four bytes
        bytes([0x30, 0x01, 0x00]),  # too short to hold a topic length
        bytes([0x30, 0x03, 0x00, 0x09, 0x61]),  # a topic longer than the packet
    ],
)
def test_it_stops_at_what_is_not_a_complete_qos0_publish(stop: bytes) -> None:
    first = publish(b"fleetcloud/1/channels/a", b"1")
    taken, got = take(first + stop)
    assert taken == len(first)
    assert got == [("fleetcloud/1/channels/a", b"1", 0, False)]


def test_a_topic_that_is_not_utf8_is_delivered_empty() -> None:
    taken, got = take(publish(b"\xff\xfe", b"1") + publish(b"ok", b"2"))
    assert got == [("", b"1", 0, False), ("ok", b"2", 0, False)]
    assert taken == len(publish(b"\xff\xfe", b"1") + publish(b"ok", b"2"))


def test_nothing_is_taken_from_an_empty_buffer() -> None:
    assert take(b"") == (0, [])


def puback(packet_id: int) -> bytes:
    return bytes([0x40, 2]) + struct.pack(">H", packet_id)


def take_with_acks(
    data: bytes, refuse: int | None = None
) -> tuple[int, list[tuple[str, bytes, int, bool] | int]]:
    got: list[tuple[str, bytes, int, bool] | int] = []

    def acknowledge(packet_id: int) -> bool:
        got.append(packet_id)
        return packet_id != refuse

    taken = take_publishes(bytearray(data), lambda *message: got.append(message), acknowledge)
    return taken, got


def test_pubacks_between_publishes_are_acknowledged_in_order() -> None:
    packets = [puback(1), publish(b"t", b"a"), puback(0x1234), puback(65535), publish(b"t", b"b")]
    taken, got = take_with_acks(b"".join(packets))
    assert taken == sum(len(p) for p in packets)
    assert got == [1, ("t", b"a", 0, False), 0x1234, 65535, ("t", b"b", 0, False)]


def test_a_puback_is_left_to_paho_without_an_acknowledger() -> None:
    assert take(puback(1) + publish(b"t", b"a")) == (0, [])


@pytest.mark.parametrize(
    "stop",
    [
        puback(9)[:3],  # cut off
        bytes([0x40, 3, 0, 9, 0]),  # not the 3.1.1 length
        bytes([0x50, 2, 0, 9]),  # PUBREC: paho's
    ],
)
def test_it_stops_at_what_is_not_a_complete_puback(stop: bytes) -> None:
    taken, got = take_with_acks(puback(8) + stop)
    assert (taken, got) == (4, [8])


def test_it_stops_after_an_acknowledgement_that_fails() -> None:
    packets = puback(1) + puback(2) + publish(b"t", b"a")
    taken, got = take_with_acks(packets, refuse=2)
    assert (taken, got) == (8, [1, 2])
