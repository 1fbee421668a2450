"""A throwaway Mosquitto broker for the tests, on a free loopback port.

``mosquitto_broker(config_dir)`` runs ``/usr/sbin/mosquitto`` with the ``mosquitto.conf``
that ``fleetcloud mqtt broker-config`` wrote there (never the system broker on 1883);
``Broker.restart()`` stops it and starts it again on the same port with the same
persistence, as an operator restarting the broker would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARY = "/usr/sbin/mosquitto"
START_TIMEOUT = 15.0


def mosquitto_binary() -> str:
    if Path(BINARY).exists():
        return BINARY
    found = shutil.which("mosquitto")
    if found is None:
        raise RuntimeError(
            "mosquitto is not installed: apt-get install mosquitto mosquitto-clients"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    config: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.config.parent / "mosquitto.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited:\n{self.log.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def mosquitto_broker(config: Path, port: int) -> Iterator[Broker]:
    broker = Broker(config, port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def broker_for(store: Any, organisation_id: int, directory: Path) -> tuple[Path, int, str]:
    """Write fleetcloud's broker config for an organisation into ``directory`` (on a free
    port); returns the config path, the port and the connector's MQTT URL."""
    from fleetcloud.connectors.mosquitto import ListenerOptions, write_config

    port = free_port()
    run_as = "root" if os.geteuid() == 0 else None  # tmp dirs are private to us
    listener = ListenerOptions(port, "127.0.0.1", run_as)
    result = await write_config(store, organisation_id, directory, listener)
    return Path(str(result["config"])), port, str(result["connector_url"])
