"""A compact binary format for a battery-powered sensor (documented byte by byte in
docs/commands.md, "The compact sensor format"). Big-endian throughout; every frame ends
with a CRC-16/CCITT-FALSE of the bytes before it.

Downlink (format_command)::

    0      u8   version = 1
    1      u8   command: 0x10 config_update, 0x20 time_sync, 0x30 reboot
    2      u8   N = length of the request id
    3      N    request id (UTF-8)
    3+N    ...  body (below)
    end-2  u16  CRC-16/CCITT-FALSE of everything before it

    config_update body: TLV entries, tag u8 | length u8 | value
        0x01 measurement_interval  u32 seconds, 1..604800
        0x02 request_device_info   u8 0 or 1
    time_sync body: u64 Unix time in milliseconds (payload "unix_ms", default: now)
    reboot body:    u16 delay in seconds (payload "delay", default 0)

Uplink (parse)::

    0      u8   version = 1
    1      u8   frame: 0x81 measurement, 0x82 device info, 0x83 command ack
    measurement: u32 Unix seconds | i16 temperature (0.01 °C) | u16 humidity (0.01 %)
                 | u16 battery (mV)
    device info: u8 firmware major | u8 firmware minor | u32 measurement interval (s)
    command ack: u8 N | N bytes request id | u8 status (1 DELIVERED, 2 SUCCEEDED,
                 3 FAILED)
    end-2  u16  CRC
"""

import binascii
import struct
import time
from typing import Any

VERSION = 1
COMMANDS = {"config_update": 0x10, "time_sync": 0x20, "reboot": 0x30}
TAG_MEASUREMENT_INTERVAL = 0x01
TAG_REQUEST_DEVICE_INFO = 0x02
ACK_STATUSES = {1: "DELIVERED", 2: "SUCCEEDED", 3: "FAILED"}


def crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


def _config_body(payload: dict[str, Any]) -> bytes:
    body = b""
    interval = payload.get("measurement_interval")
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, int):
            raise ValueError("measurement_interval must be an integer number of seconds")
        if not 1 <= interval <= 604_800:
            raise ValueError("measurement_interval must be between 1 and 604800 seconds")
        body += struct.pack(">BBI", TAG_MEASUREMENT_INTERVAL, 4, interval)
    if "request_device_info" in payload:
        flag = int(bool(payload["request_device_info"]))
        body += struct.pack(">BBB", TAG_REQUEST_DEVICE_INFO, 1, flag)
    if not body:
        raise ValueError("config_update needs measurement_interval or request_device_info")
    return body


def _body(command_type: str, payload: dict[str, Any]) -> bytes:
    if command_type == "config_update":
        return _config_body(payload)
    if command_type == "time_sync":
        return struct.pack(">Q", int(payload.get("unix_ms") or time.time() * 1000))
    delay = int(payload.get("delay", 0))
    if not 0 <= delay <= 65_535:
        raise ValueError("delay must be between 0 and 65535 seconds")
    return struct.pack(">H", delay)


def format_command(command: dict[str, Any], config: dict[str, Any]) -> bytes | None:
    code = COMMANDS.get(command["command_type"])
    if code is None:
        return None  # not a command this sensor knows: the command fails with that reason
    request_id = str(command["request_id"]).encode()
    if len(request_id) > 255:
        raise ValueError("request_id is longer than 255 bytes")
    frame = bytes([VERSION, code, len(request_id)]) + request_id
    frame += _body(command["command_type"], command.get("payload") or {})
    return frame + struct.pack(">H", crc16(frame))


def _measurement(body: bytes) -> dict[str, Any]:
    seconds, temperature, humidity, battery = struct.unpack(">IhHH", body)
    return {
        "ts": seconds,
        "temperature": temperature / 100,
        "humidity": humidity / 100,
        "battery": battery / 1000,
    }


def _device_info(body: bytes) -> dict[str, Any]:
    major, minor, interval = struct.unpack(">BBI", body)
    return {"firmware": f"{major}.{minor}", "measurement_interval": interval}


def _ack(body: bytes) -> dict[str, Any]:
    size = body[0]
    request_id = body[1 : 1 + size].decode()
    status = ACK_STATUSES.get(body[1 + size])
    if status is None or len(body) != size + 2:
        raise ValueError("malformed command ack")
    return {"request_id": request_id, "status": status}


FRAMES = {0x81: _measurement, 0x82: _device_info, 0x83: _ack}


def parse(payload: bytes, metadata: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    if len(payload) < 4 or payload[0] != VERSION:
        raise ValueError("not a version 1 frame")
    frame, crc = payload[:-2], struct.unpack(">H", payload[-2:])[0]
    if crc16(frame) != crc:
        raise ValueError("CRC mismatch")
    decode = FRAMES.get(frame[1])
    if decode is None:
        raise ValueError(f"unknown frame type 0x{frame[1]:02x}")
    return decode(frame[2:])
