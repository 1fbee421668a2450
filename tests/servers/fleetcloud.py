"""Run ``fleetcloud serve`` as a real subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers.postgres import free_port

FLEETCLOUD = [sys.executable, "-m", "fleetcloud.cli"]


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a ``fleetcloud`` command and return its stdout (raises on failure)."""
    done = subprocess.run(
        [*FLEETCLOUD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"fleetcloud {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def cli_json(*args: str) -> dict[str, str]:
    result: dict[str, str] = json.loads(cli(*args))
    return result


@dataclass
class Server:
    database: str
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        args = ["serve", "--port", str(self.port), "--database", self.database, "--no-demo"]
        self.log = (
            self.log or Path(os.environ.get("TMPDIR", "/tmp")) / f"fleetcloud-{self.port}.log"
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*FLEETCLOUD, *args, *self.extra], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fleetcloud exited early:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"fleetcloud did not answer within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@contextlib.contextmanager
def running_server(database: str, *extra: str) -> Iterator[Server]:
    server = Server(database, extra=extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()
