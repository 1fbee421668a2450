"""What every benchmark needs: a lean HTTP/1.1 client, CPU and load readings from
``/proc``, the machine's description, an organisation with devices made by the CLI, and
writing a marked section of ``docs/benchmarks.md``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import platform
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from tests.servers.fleetcloud import FLEETCLOUD

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- a lean HTTP/1.1 client


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight at a time. Far
    cheaper per request than a full client, so the load generator stays out of the way."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    @classmethod
    async def open(cls, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, "127.0.0.1", port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail(ConnectionError(f"no content-length in {head!r}"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else None])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((int(head[9:12]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.waiter = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        if self.closed:
            raise ConnectionError("the connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------- readings


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of process ``pid`` and its threads so far (of its thread
    ``tid`` only, if given: the main thread, which runs the event loop, has ``tid == pid``)."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pid_running(fragment: str) -> int | None:
    """The process whose command line contains ``fragment`` (the first one found)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fragment in command:
            return int(entry.name)
    return None


def system_busy() -> float:
    """CPU seconds the whole machine has spent busy so far (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def percentile(values: Sequence[float], percent: float) -> float:
    """The nearest-rank ``percent`` percentile (0–100); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]


def reference_loop() -> float:
    """Seconds a fixed pure-Python loop (10 million additions) takes, best of three: how
    fast this machine runs Python at the moment. Shared machines vary from day to day
    (this figure has been 0.5 s on some and 1.8 s on others), and so does everything
    measured with them; figures from different runs compare only next to it."""
    best = float("inf")
    for _ in range(3):
        start, total = time.perf_counter(), 0
        for n in range(10_000_000):
            total += n
        best = min(best, time.perf_counter() - start)
    return best


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "os": f"{platform.system()} {platform.release()}",
    }


# ---------------------------------------------------------------- set-up with the CLI


def cli_json(*args: str) -> dict[str, Any]:
    """Run ``fleetcloud ARGS --json`` and return what it printed."""
    done = subprocess.run([*FLEETCLOUD, *args, "--json"], capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fleetcloud {' '.join(args)} failed: {done.stderr.decode()[-500:]}")
    answer: dict[str, Any] = orjson.loads(done.stdout)
    return answer


def create_devices(
    database_url: str, count: int, prefix: str = "d"
) -> tuple[dict[str, Any], list[str]]:
    """A new organisation (its ``fleetcloud org create`` answer, with the admin token) and
    the agent ids of ``count`` devices, created by CLI processes running side by side."""
    organisation = cli_json("org", "create", "bench", "--database", database_url)
    makers = [
        subprocess.Popen(
            [
                *FLEETCLOUD, "device", "create", f"{prefix}{n}",
                "--org", str(organisation["organisation_id"]),
                "--database", database_url, "--json",
            ],
            stdout=subprocess.PIPE,
        )
        for n in range(count)
    ]  # fmt: skip
    ids = []
    for maker in makers:
        out, _ = maker.communicate(timeout=60)
        if maker.returncode != 0:
            raise RuntimeError(f"{maker.args!r} failed with {maker.returncode}")
        ids.append(str(orjson.loads(out)["agent_id"]))
    return organisation, ids


# ---------------------------------------------------------------- the docs


def write_docs(name: str, section: str) -> None:
    """Put ``section`` between benchmark ``name``'s markers in docs/benchmarks.md (added at
    the end if the markers are not there yet)."""
    begin = f"<!-- benchmarks.{name}:begin (written by `python -m benchmarks.{name}`) -->"
    end = f"<!-- benchmarks.{name}:end -->"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text)
