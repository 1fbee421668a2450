"""Jobs benchmark: many simulated device agents long-polling one ``fleetcloud serve``.

    uv run python -m benchmarks.jobs                   # 10,000 agents; updates docs/benchmarks.md
    uv run python -m benchmarks.jobs --agents 2000     # fewer agents
    uv run python -m benchmarks.jobs --quick           # 200 agents, a few seconds: a smoke run
    uv run python -m benchmarks.jobs --no-write        # print only, leave the docs alone
    uv run python -m benchmarks.jobs --no-write --profile DIR  # cProfile in every server thread

It starts ``fleetcloud serve --no-demo`` as a subprocess on a SQLite file in a temporary
directory and simulates ``--agents`` device agents in this one process (asyncio, uvloop
when installed, one keep-alive HTTP/1.1 connection per agent):

1. **Set-up.** An organisation and a provisioning key with the CLI. ``--http-register``
   devices register over ``POST /api/v1/device/register`` (timed); the rest are registered
   in bulk *before the server starts*, through the store with the same code the endpoint
   runs (``fleetcloud.jobs.devices.register_device``), 500 per transaction. A second
   organisation holds a few *probe* devices, which no job targets.
2. **Connect.** Every agent opens its connection and makes one plain ``jobs/next``; then
   each starts its loop: ``GET /devices/{uuid}/jobs/next?wait=--wait`` (re-polled when it
   answers "No pending jobs"); on a job, ``PATCH …/status`` ``IN_PROGRESS``, then
   ``SUCCEEDED``, then back to long-polling.
3. **Hold.** With every long-poll waiting, the server's CPU and RSS for ``--hold`` seconds
   (``/proc/<pid>/stat`` and ``/proc/<pid>/status``).
4. **Plain polls.** The probe devices poll ``jobs/next`` without ``wait`` at
   ``--probe-rate`` requests/s for ``--probe-seconds``: the latency of a poll while the
   server holds every long-poll.
5. **Wake-ups.** ``--wake-probes`` jobs, one after the other, each targeting one agent's
   device: the time from sending ``POST /jobs/execute`` to that agent's long-poll answering
   with the job.
6. **Fan-out.** One ``POST /jobs/execute`` with ``target_type: all``: the time until every
   agent has its execution (``IN_PROGRESS``: ``jobs/next`` starts it) and until every
   execution is ``SUCCEEDED``, seen by the agents and by the server's own clock (the
   ``started_ms``/``finished_ms`` it stored). The probe devices keep polling meanwhile, so
   the plain-poll latency during the fan-out is measured too.

Afterwards it checks, through the API and then in the database, that the fan-out job is
``COMPLETED`` with every execution ``SUCCEEDED`` exactly once, and so is every wake-up
job. The run fails (exit status 1) otherwise.

``RLIMIT_NOFILE`` is raised to what the agents need before the server is spawned (the
server inherits it); the server's own limit is read back from ``/proc/<pid>/limits``.
The server's CPU is reported in total and for its event-loop thread alone (the rest is
its SQLite writer and reader threads).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tests.servers.fleetcloud import Server

from benchmarks._common import (
    DOCS,
    ROOT,
    Connection,
    cli_json,
    cpu_seconds,
    load_average,
    machine,
    percentile,
    system_busy,
    write_docs,
)
from fleetcloud.jobs import devices
from fleetcloud.store import open_store
from fleetcloud.store.ops import Work

PAGE = os.sysconf("SC_PAGE_SIZE")
REGISTER_CHUNK = 500
CONNECT_AT_ONCE = 256  # connections being opened at the same time (uvicorn's backlog is 2048)
DOCUMENT = {
    "version": "1.0",
    "includeStdOut": True,
    "steps": [{"action": {"name": "noop", "type": "runCommand", "input": {"command": "true"}}}],
}
IN_PROGRESS = orjson.dumps({"status": "IN_PROGRESS", "status_details": {"step": "noop"}})
SUCCEEDED = orjson.dumps(
    {
        "status": "SUCCEEDED",
        "exit_code": 0,
        "stdout": "ok\n",
        "stderr": "",
        "status_details": {"duration_ms": 1},
    }
)
NO_PENDING = b'{"message"'

# ---------------------------------------------------------------- a lean HTTP/1.1 client


def http(
    method: str, path: str, port: int, headers: dict[str, str], body: bytes | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def call(port: int, raw: bytes) -> tuple[int, Any]:
    """One request on a fresh connection (operator calls: rare, and never left idle)."""
    conn = await Connection.open(port)
    try:
        status, body = await conn.request(raw)
    finally:
        conn.close()
    return status, orjson.loads(body) if body else None


# ---------------------------------------------------------------- measuring


def rss_bytes(pid: int) -> int:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def open_files_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return f"{soft} (hard {hard})"
    return "unknown"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Usage:
    """CPU of the server, of this process and of the rest of the machine over a phase
    (each as a share of one core), and the server's RSS during it (sampled)."""

    seconds: float
    server: float
    client: float
    other: float
    rss_mean: float
    rss_max: float
    loop: float = 0.0  # the server's event-loop thread (part of ``server``)


class Meter:
    """Samples the server's RSS every ``interval`` seconds; CPU by snapshots."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _sample(self) -> None:
        while True:
            self.samples.append((time.monotonic(), rss_bytes(self.pid)))
            await asyncio.sleep(self.interval)

    def snap(self) -> tuple[float, float, float, float, float]:
        return (
            time.monotonic(),
            cpu_seconds(self.pid),
            time.process_time(),
            system_busy(),
            cpu_seconds(self.pid, self.pid),
        )

    def usage(self, start: tuple[float, ...], stop: tuple[float, ...]) -> Usage:
        seconds = max(stop[0] - start[0], 1e-9)
        server = (stop[1] - start[1]) / seconds
        client = (stop[2] - start[2]) / seconds
        busy = (stop[3] - start[3]) / seconds
        rss = [r for t, r in self.samples if start[0] <= t <= stop[0]] or [rss_bytes(self.pid)]
        return Usage(
            seconds,
            server,
            client,
            max(busy - server - client, 0.0),
            sum(rss) / len(rss),
            max(rss),
            (stop[4] - start[4]) / seconds,
        )


# ---------------------------------------------------------------- the simulated fleet


@dataclass
class JobTimes:
    """When the agents saw one job: its answer, and their two status updates."""

    got: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    succeeded: list[float] = field(default_factory=list)
    devices: set[str] = field(default_factory=set)
    expected: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        if self.expected and len(self.succeeded) >= self.expected:
            self.done.set()


@dataclass
class Fleet:
    port: int
    token: str  # the bench organisation's admin token
    devices: list[tuple[str, str]]  # (uuid, api key) of every agent
    probes: list[tuple[str, str]]  # devices of the other organisation: never targeted
    jobs: dict[str, JobTimes] = field(default_factory=dict)
    watching: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    errors: int = 0
    first_error: str = ""
    reconnects: int = 0
    first_reconnect: str = ""
    duplicates: int = 0
    stopping: bool = False

    def error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what

    def reconnect(self, why: str) -> None:
        self.reconnects += 1
        if not self.first_reconnect:
            self.first_reconnect = why

    def times(self, job_id: str) -> JobTimes:
        times = self.jobs.get(job_id)
        if times is None:
            times = self.jobs[job_id] = JobTimes()
        return times

    def admin(self, method: str, path: str, body: Any = None) -> bytes:
        payload = None if body is None else orjson.dumps(body)
        return http(method, path, self.port, {"Authorization": f"Bearer {self.token}"}, payload)


class Agent:
    """One simulated device agent: long-poll, report IN_PROGRESS, report SUCCEEDED."""

    __slots__ = ("conn", "fleet", "key", "plain", "poll", "uuid")

    def __init__(self, fleet: Fleet, uuid: str, key: str, wait: float) -> None:
        self.fleet, self.uuid, self.key = fleet, uuid, key
        headers = {"X-Device-API-Key": key}
        path = f"/api/v1/devices/{uuid}/jobs/next"
        self.poll = http("GET", f"{path}?wait={wait:g}", fleet.port, headers)
        self.plain = http("GET", path, fleet.port, headers)
        self.conn: Connection | None = None

    def patch(self, job_id: str, body: bytes) -> bytes:
        path = f"/api/v1/devices/{self.uuid}/jobs/{job_id}/status"
        return http("PATCH", path, self.fleet.port, {"X-Device-API-Key": self.key}, body)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """One request; on a dropped connection, reconnect and send it again (counted)."""
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = await Connection.open(self.fleet.port)
                return await self.conn.request(raw)
            except OSError as exc:  # ConnectionError, refused, reset
                if self.fleet.stopping:
                    raise
                self.fleet.reconnect(f"{self.uuid}: {exc!r}")
                self.conn = None
                await asyncio.sleep(0.5)

    async def run(self, gate: asyncio.Semaphore, connected: Counter) -> None:
        """Connect (at most ``CONNECT_AT_ONCE`` at a time) with one plain poll, then loop."""
        try:
            async with gate:
                status, body = await self.send(self.plain)
        except Exception as exc:
            self.fleet.error(f"{self.uuid}: first poll: {exc!r}")
            raise
        finally:
            connected.add()
        if status != 200 or not body.startswith(NO_PENDING):
            self.fleet.error(f"{self.uuid}: first poll: HTTP {status}: {body[:200]!r}")
        try:
            await self.loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.fleet.stopping:
                self.fleet.error(f"{self.uuid}: {exc!r}")

    async def loop(self) -> None:
        fleet = self.fleet
        while not fleet.stopping:
            status, body = await self.send(self.poll)
            got = time.perf_counter()
            if status != 200:
                fleet.error(f"{self.uuid}: long-poll: HTTP {status}: {body[:200]!r}")
                await asyncio.sleep(1)
                continue
            if body.startswith(NO_PENDING):
                continue
            job_id = orjson.loads(body)["job_id"]
            times = fleet.times(job_id)
            if self.uuid in times.devices:
                fleet.duplicates += 1
            times.devices.add(self.uuid)
            times.got.append(got)
            watcher = fleet.watching.pop(self.uuid, None)
            if watcher is not None and not watcher.done():
                watcher.set_result(got)
            for update, into in ((IN_PROGRESS, times.started), (SUCCEEDED, times.succeeded)):
                status, answer = await self.send(self.patch(job_id, update))
                if status != 200:
                    fleet.error(f"{self.uuid}: PATCH: HTTP {status}: {answer[:200]!r}")
                    break
                into.append(time.perf_counter())
            times.check()


class Counter:
    """Counts up to ``target``, then sets ``reached``."""

    def __init__(self, target: int) -> None:
        self.count, self.target = 0, target
        self.reached = asyncio.Event()

    def add(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


async def probe_polls(
    fleet: Fleet, rate: float, seconds: float, connections: int = 16
) -> tuple[list[float], int]:
    """Plain ``jobs/next`` polls by the probe devices at ``rate`` per second; latencies."""
    latencies: list[float] = []
    sent = 0
    polls = [
        http("GET", f"/api/v1/devices/{uuid}/jobs/next", fleet.port, {"X-Device-API-Key": key})
        for uuid, key in fleet.probes
    ]
    conns = [await Connection.open(fleet.port) for _ in range(connections)]
    start = time.perf_counter()
    stop = start + seconds
    interval = connections / rate

    async def worker(index: int, conn: Connection) -> None:
        nonlocal sent
        due = start + index * interval / connections
        while due < stop:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            raw = polls[sent % len(polls)]
            sent += 1
            began = time.perf_counter()
            status, body = await conn.request(raw)
            latencies.append(time.perf_counter() - began)
            if status != 200 or not body.startswith(NO_PENDING):
                fleet.error(f"plain poll: HTTP {status}: {body[:200]!r}")
            due += interval

    try:
        await asyncio.gather(*(worker(i, conn) for i, conn in enumerate(conns)))
    finally:
        for conn in conns:
            conn.close()
    return latencies, sent


async def execute(fleet: Fleet, name: str, targets: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"job_name": name, "job_document": DOCUMENT, "timeout_seconds": 600}
    if targets is None:
        body["target_type"] = "all"
    else:
        body["target_type"] = "device"
        body["target_devices"] = targets
    status, answer = await call(fleet.port, fleet.admin("POST", "/api/v1/jobs/execute", body))
    if status != 201:
        raise RuntimeError(f"execute answered HTTP {status}: {answer}")
    result: dict[str, Any] = answer
    return result


async def wake_probes(fleet: Fleet, count: int, gap: float) -> tuple[list[float], list[str]]:
    """Jobs for one agent each, one after another: execute sent → that agent has the job."""
    latencies, job_ids = [], []
    step = max(len(fleet.devices) // max(count, 1), 1)
    for n in range(count):
        uuid = fleet.devices[(n * step + step // 2) % len(fleet.devices)][0]
        watcher: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        fleet.watching[uuid] = watcher
        began = time.perf_counter()
        job = await execute(fleet, f"wake-{n}", [uuid])
        job_ids.append(job["job_id"])
        fleet.times(job["job_id"]).expected = 1
        got = await asyncio.wait_for(watcher, 30)
        latencies.append(got - began)
        await fleet.times(job["job_id"]).done.wait()
        await asyncio.sleep(gap)
    return latencies, job_ids


# ---------------------------------------------------------------- set-up


def _register_many(secret: str, names: Sequence[str]) -> Work[list[tuple[str, str]]]:
    registered = []
    for name in names:
        agent, key = yield from devices.register_device(secret, name)
        registered.append((str(agent.id), key))
    return registered


async def register_in_store(database: str, secret: str, names: Sequence[str]) -> list[Any]:
    """Register devices through the store, ``REGISTER_CHUNK`` per transaction."""
    registered: list[tuple[str, str]] = []
    async with open_store(database) as store:
        for start in range(0, len(names), REGISTER_CHUNK):
            chunk = names[start : start + REGISTER_CHUNK]
            registered.extend(await store.write(_register_many(secret, chunk)))
    return registered


async def register_over_http(
    port: int, secret: str, names: Sequence[str], connections: int = 32
) -> tuple[list[tuple[str, str]], list[float]]:
    """``POST /api/v1/device/register`` for each name, on ``connections`` connections."""
    registered: list[tuple[str, str]] = []
    latencies: list[float] = []
    pending = list(reversed(names))

    async def worker() -> None:
        conn = await Connection.open(port)
        try:
            while pending:
                name = pending.pop()
                body = orjson.dumps({"provisioning_key": secret, "name": name})
                began = time.perf_counter()
                status, answer = await conn.request(
                    http("POST", "/api/v1/device/register", port, {}, body)
                )
                latencies.append(time.perf_counter() - began)
                if status != 201:
                    raise RuntimeError(f"register answered HTTP {status}: {answer[:300]!r}")
                device = orjson.loads(answer)
                registered.append((device["uuid"], device["api_key"]))
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(min(connections, len(names)) or 1)))
    return registered, latencies


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to ``needed`` (children inherit it); the new limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"{needed} file descriptors are needed but the hard limit is {hard}; "
            "raise it (ulimit -Hn) or run fewer --agents"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def until_quiet(
    pid: int, below: float = 0.3, window: float = 0.5, limit: float = 30
) -> float:
    """Wait until the server uses less than ``below`` of a core over ``window`` seconds
    (it has taken in every long-poll); the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        before = cpu_seconds(pid)
        await asyncio.sleep(window)
        if (cpu_seconds(pid) - before) / window < below:
            break
    return time.monotonic() - began


SERVE_PROFILED = "--serve-profiled"


def serve_profiled(directory: Path, argv: list[str]) -> None:
    """Run ``fleetcloud ARGV`` with cProfile on in every thread; when it exits, one stats
    file per thread in ``directory`` (the event loop's is ``MainThread.prof``).

    cProfile roughly doubles the cost of Python code, so the figures of a profiled run
    are not the benchmark's; the shares are what it is for."""
    profiles: list[tuple[str, cProfile.Profile]] = []

    def install(frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        profiles.append((f"{threading.current_thread().name}-{len(profiles)}", profile))
        profile.enable()

    from fleetcloud.cli import main as fleetcloud

    # uvicorn raises the SIGTERM it caught again after its shutdown: end with SystemExit
    # then, so the stats are written.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    threading.setprofile(install)
    main_thread = cProfile.Profile()
    main_thread.enable()
    try:
        fleetcloud(argv, standalone_mode=False)
    finally:
        main_thread.disable()
        directory.mkdir(parents=True, exist_ok=True)
        main_thread.dump_stats(directory / "MainThread.prof")
        for name, profile in profiles:
            profile.create_stats()
            profile.dump_stats(directory / f"{name}.prof")


class ProfiledServer(Server):
    """``fleetcloud serve`` under ``serve_profiled`` (with ``--profile DIR``)."""

    def __init__(self, database: str, log: Path, directory: Path) -> None:
        super().__init__(database, log=log)
        self.directory = directory

    def start(self, timeout: float = 30) -> None:
        args = ["serve", "--port", str(self.port), "--database", self.database, "--no-demo"]
        command = [sys.executable, "-m", "benchmarks.jobs", SERVE_PROFILED, str(self.directory)]
        assert self.log is not None
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fleetcloud exited early:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError, ConnectionError):
                status, _ = run_loop(call(self.port, http("GET", "/healthz", self.port, {})))
                if status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"fleetcloud did not answer within {timeout} s")


def print_profiles(directory: Path, top: int = 30) -> None:
    """The functions that took the most time in each busy thread of a profiled server."""
    for path in sorted(directory.glob("*.prof")):
        stats = pstats.Stats(str(path))
        total = getattr(stats, "total_tt", 0.0)
        if total < 1.0:
            continue  # an idle thread (a reader that did little, the asyncio executor)
        print(f"\n==== {path.stem}: {total:.1f} s profiled")
        stats.sort_stats("tottime").print_stats(top)


# ---------------------------------------------------------------- the run


@dataclass
class Figures:
    agents: int
    http_registered: int = 0
    http_register_seconds: float = 0.0
    http_register_latencies: list[float] = field(default_factory=list)
    store_registered: int = 0
    store_register_seconds: float = 0.0
    server_fd_limit: str = ""
    client_fd_limit: str = ""
    server_fds_held: int = 0
    rss_idle: float = 0.0
    threads: str = ""
    connect_seconds: float = 0.0
    settle_seconds: float = 0.0
    hold: Usage | None = None
    plain: list[float] = field(default_factory=list)
    plain_usage: Usage | None = None
    plain_sent: int = 0
    wake: list[float] = field(default_factory=list)
    wake_jobs: list[str] = field(default_factory=list)
    fanout_job: str = ""
    execute_seconds: float = 0.0
    got: list[float] = field(default_factory=list)  # seconds after execute was sent
    started: list[float] = field(default_factory=list)
    succeeded: list[float] = field(default_factory=list)
    fanout_plain: list[float] = field(default_factory=list)
    fanout: Usage | None = None
    fanout_completed: bool = False
    server_started: float = 0.0  # server clock: job created → last started_ms
    server_finished: float = 0.0
    reconnects: int = 0
    first_reconnect: str = ""
    load_before: str = ""
    load_after: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def all_in_progress(self) -> float:
        return max(self.got) if len(self.got) >= self.agents else float("nan")

    @property
    def all_succeeded(self) -> float:
        return max(self.succeeded) if len(self.succeeded) >= self.agents else float("nan")


async def simulate(fleet: Fleet, server: Server, options: argparse.Namespace, f: Figures) -> None:
    assert server.process is not None
    pid = server.process.pid
    meter = Meter(pid)
    meter.start()
    f.rss_idle = rss_bytes(pid)
    agents = [Agent(fleet, uuid, key, options.wait) for uuid, key in fleet.devices]
    tasks: list[asyncio.Task[None]] = []
    try:
        print(f"connecting {len(agents):,} agents …", flush=True)
        began = time.perf_counter()
        gate = asyncio.Semaphore(CONNECT_AT_ONCE)
        connected = Counter(len(agents))
        tasks = [asyncio.create_task(agent.run(gate, connected)) for agent in agents]
        await connected.reached.wait()
        f.connect_seconds = time.perf_counter() - began
        f.settle_seconds = await until_quiet(pid)
        f.server_fds_held = open_fds(pid)
        f.threads = status_field(pid, "Threads")

        print(f"holding {len(agents):,} long-polls for {options.hold:g} s …", flush=True)
        start = meter.snap()
        await asyncio.sleep(options.hold)
        f.hold = meter.usage(start, meter.snap())

        print(f"plain polls at {options.probe_rate:g}/s for {options.probe_seconds:g} s …")
        start = meter.snap()
        f.plain, f.plain_sent = await probe_polls(fleet, options.probe_rate, options.probe_seconds)
        f.plain_usage = meter.usage(start, meter.snap())

        print(f"{options.wake_probes} single-device jobs …", flush=True)
        f.wake, f.wake_jobs = await wake_probes(fleet, options.wake_probes, gap=0.1)
        await until_quiet(pid, limit=10)

        print(f"fan-out: one job to all {len(agents):,} agents …", flush=True)
        start = meter.snap()
        plain = asyncio.create_task(
            probe_polls(fleet, options.probe_rate, options.fanout_probe_seconds)
        )
        sent = time.perf_counter()
        job = await execute(fleet, "fan-out", None)
        f.execute_seconds = time.perf_counter() - sent
        f.fanout_job = job["job_id"]
        times = fleet.times(f.fanout_job)
        times.expected = len(agents)
        times.check()
        try:
            await asyncio.wait_for(times.done.wait(), options.timeout)
        except TimeoutError:
            f.problems.append(
                f"after {options.timeout:g} s only {len(times.got):,} agents had the job and "
                f"{len(times.succeeded):,} had reported SUCCEEDED"
            )
        f.fanout = meter.usage(start, meter.snap())
        f.got = [t - sent for t in times.got]
        f.started = [t - sent for t in times.started]
        f.succeeded = [t - sent for t in times.succeeded]
        f.fanout_plain, _ = await plain
        await verify_api(fleet, f)
    finally:
        fleet.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for agent in agents:
            if agent.conn is not None:
                agent.conn.close()
        await meter.stop()


async def verify_api(fleet: Fleet, f: Figures) -> None:
    """The jobs as the API reports them: COMPLETED, every execution SUCCEEDED."""
    expected = [(f.fanout_job, len(fleet.devices))] + [(job, 1) for job in f.wake_jobs]
    for job_id, count in expected:
        status, job = await call(fleet.port, fleet.admin("GET", f"/api/v1/jobs/{job_id}"))
        if status != 200:
            f.problems.append(f"GET /jobs/{job_id}: HTTP {status}")
            continue
        counts = job["counts"]
        if job["status"] != "COMPLETED" or counts["SUCCEEDED"] != count or counts["total"] != count:
            f.problems.append(
                f"job {job['job_name']} is {job['status']} with counts {counts}, "
                f"not COMPLETED with {count} SUCCEEDED"
            )
    f.fanout_completed = not f.problems
    f.reconnects, f.first_reconnect = fleet.reconnects, fleet.first_reconnect
    if fleet.duplicates:
        f.problems.append(f"{fleet.duplicates} executions were handed out twice")
    if fleet.errors:
        f.problems.append(f"{fleet.errors} failed requests; first: {fleet.first_error}")


def verify_database(path: Path, f: Figures, devices: int) -> None:
    """After the server stopped: the executions as stored, and the server's own timings."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        created = conn.execute(
            "SELECT created_ms FROM jobs WHERE id = ?", (int(f.fanout_job),)
        ).fetchone()
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT device_id), sum(status = 'SUCCEEDED'), "
            "max(started_ms), max(finished_ms), max(attempt) "
            "FROM job_executions WHERE job_id = ?",
            (int(f.fanout_job),),
        ).fetchone()
    finally:
        conn.close()
    count, distinct, succeeded, last_start, last_finish, attempts = rows
    if not (count == distinct == succeeded == devices) or attempts != 1:
        f.problems.append(
            f"database: {count} executions for {distinct} devices, {succeeded} SUCCEEDED, "
            f"up to attempt {attempts}; expected {devices} of each, one attempt"
        )
    if created and last_start is not None and last_finish is not None:
        f.server_started = (last_start - created[0]) / 1000
        f.server_finished = (last_finish - created[0]) / 1000


# ---------------------------------------------------------------- reporting


def ms(values: Sequence[float]) -> str:
    if not values:
        return "—"
    return f"{percentile(values, 50) * 1000:.1f} / {percentile(values, 99) * 1000:.1f} ms"


def secs(values: Sequence[float]) -> str:
    if not values:
        return "—"
    return f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f} / {max(values):.2f} s"


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def cores(usage: Usage | None) -> str:
    if usage is None:
        return "—"
    return (
        f"server {usage.server * 100:.0f} % (event-loop thread {usage.loop * 100:.0f} %), "
        f"simulator {usage.client * 100:.0f} %, rest of the machine {usage.other * 100:.0f} %"
    )


def targets(f: Figures) -> list[tuple[str, bool]]:
    p99 = [percentile(f.plain, 99), percentile(f.fanout_plain, 99), percentile(f.wake, 99)]
    return [
        (
            f"execute → all {f.agents:,} IN_PROGRESS < 10 s",
            f.all_in_progress < 10 and f.server_started < 10,
        ),
        ("plain `jobs/next` p99 < 50 ms, long-polls held", p99[0] < 0.05),
        ("plain `jobs/next` p99 < 50 ms, during the fan-out", p99[1] < 0.05),
        ("single-device execute → long-poll answered, p99 < 50 ms", p99[2] < 0.05),
    ]


def rows(f: Figures, options: argparse.Namespace) -> list[tuple[str, str]]:
    n = f"{f.agents:,}"
    hold, fan = f.hold, f.fanout
    per_poll = (hold.rss_max - f.rss_idle) / max(f.agents, 1) if hold else 0.0
    register = []
    if f.http_registered:
        rate = f.http_registered / max(f.http_register_seconds, 1e-9)
        register.append(
            (
                f"`POST /device/register`, {f.http_registered:,} devices on 32 connections",
                f"{rate:,.0f}/s, p50 / p99 {ms(f.http_register_latencies)}",
            )
        )
    if f.store_registered:
        rate = f.store_registered / max(f.store_register_seconds, 1e-9)
        register.append(
            (
                f"bulk registration through the store, {f.store_registered:,} devices",
                f"{rate:,.0f}/s ({f.store_register_seconds:.1f} s)",
            )
        )
    return [
        *register,
        (f"connect {n} agents, one plain poll each", f"{f.connect_seconds:.1f} s"),
        (
            f"**holding {n} long-polls** (`wait={options.wait:g}`): server CPU, RSS",
            (
                f"**{hold.server * 100:.0f} % of a core; RSS {mib(hold.rss_max)}** "
                f"({mib(f.rss_idle)} before the agents, ~{per_poll / 1024:.0f} KiB per "
                f"long-poll); {f.server_fds_held:,} fds open, {f.threads} threads"
                if hold
                else "—"
            ),
        ),
        (
            f"**plain `jobs/next`** (no wait), {options.probe_rate:g}/s, while {n} long-polls "
            "are held — p50 / p99",
            f"**{ms(f.plain)}** ({len(f.plain):,} polls)",
        ),
        (
            f"single-device job: `execute` sent → the device's long-poll answers "
            f"({len(f.wake)} jobs) — p50 / p99",
            f"**{ms(f.wake)}**",
        ),
        (
            f"fan-out `POST /jobs/execute` (`all`, {n} targets) answered",
            f"{f.execute_seconds:.2f} s",
        ),
        (
            f"**execute → all {n} IN_PROGRESS** (the last long-poll answered; server clock)",
            f"**{f.all_in_progress:.1f} s**; {f.server_started:.1f} s",
        ),
        (
            f"**execute → all {n} SUCCEEDED** (the last `PATCH` answered; server clock)",
            f"**{f.all_succeeded:.1f} s**; {f.server_finished:.1f} s",
        ),
        ("long-poll answered after execute, over all agents — p50 / p99 / max", secs(f.got)),
        (
            f"**plain `jobs/next`** (no wait), {options.probe_rate:g}/s, during the fan-out "
            "— p50 / p99",
            f"**{ms(f.fanout_plain)}** ({len(f.fanout_plain):,} polls)",
        ),
        (
            "claims + status updates during the fan-out",
            (
                f"{3 * f.agents / max(f.all_succeeded, 1e-9):,.0f} requests/s; "
                f"RSS up to {mib(fan.rss_max)}"
                if fan
                else "—"
            ),
        ),
        ("CPU while holding (share of one core)", cores(hold)),
        ("CPU during the fan-out (share of one core)", cores(fan)),
    ]


def markdown(f: Figures, facts: dict[str, str], command: str, options: argparse.Namespace) -> str:
    lines = [
        f"Measured {facts['date']} with `{command}`.",
        "",
        f"Machine: {facts['nproc']} cores ({facts['cpu']}), {facts['os']}, "
        f"Python {facts['python']}, SQLite {facts['sqlite']}; load average "
        f"{f.load_before} before the run, {f.load_after} after. Open-files limit "
        f"{f.client_fd_limit} for the simulator, {f.server_fd_limit} for the server.",
        "",
        "| what | figure |",
        "|---|---|",
        *(f"| {what} | {figure} |" for what, figure in rows(f, options)),
        "",
        "Targets: "
        + "; ".join(f"{name}: {'met' if ok else '**not met**'}" for name, ok in targets(f))
        + ".",
        "",
        "Check after the run: "
        + (
            f"passed — the fan-out job and the {len(f.wake_jobs)} single-device jobs are "
            "`COMPLETED` with every execution `SUCCEEDED`, one attempt per device, no execution "
            "handed out twice, no failed request."
            if not f.problems
            else "**FAILED** — " + "; ".join(f.problems)
        )
        + (
            f" The agents reconnected {f.reconnects:,} times (a dropped connection; "
            f"first: {f.first_reconnect})."
            if f.reconnects
            else " No agent lost its connection."
        ),
    ]
    return "\n".join(lines)


def summary(f: Figures) -> dict[str, Any]:
    def p(values: Sequence[float], q: float) -> float | None:
        return round(percentile(values, q) * 1000, 2) if values else None

    return {
        "agents": f.agents,
        "all_succeeded": f.fanout_completed and not f.problems,
        "execute_to_all_in_progress_s": f.all_in_progress,
        "execute_to_all_succeeded_s": f.all_succeeded,
        "server_all_in_progress_s": f.server_started,
        "server_all_succeeded_s": f.server_finished,
        "plain_poll_p50_ms": p(f.plain, 50),
        "plain_poll_p99_ms": p(f.plain, 99),
        "fanout_plain_poll_p99_ms": p(f.fanout_plain, 99),
        "wake_p50_ms": p(f.wake, 50),
        "wake_p99_ms": p(f.wake, 99),
        "hold_server_cpu": f.hold.server if f.hold else None,
        "hold_server_rss_mib": f.hold.rss_max / 2**20 if f.hold else None,
        "reconnects": f.reconnects,
        "problems": f.problems,
    }


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.jobs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--agents", type=int, default=10_000, help="simulated device agents")
    parser.add_argument(
        "--http-register",
        type=int,
        default=1000,
        help="how many of them register over HTTP (the rest in bulk through the store)",
    )
    parser.add_argument("--wait", type=float, default=30.0, help="the agents' ?wait= seconds")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds to hold the long-polls")
    parser.add_argument("--probe-rate", type=float, default=200.0, help="plain polls per second")
    parser.add_argument("--probe-seconds", type=float, default=5.0)
    parser.add_argument(
        "--fanout-probe-seconds",
        type=float,
        default=10.0,
        help="how long plain polls continue from the fan-out's execute",
    )
    parser.add_argument("--wake-probes", type=int, default=50, help="single-device jobs")
    parser.add_argument("--timeout", type=float, default=600.0, help="fan-out time limit, s")
    parser.add_argument(
        "--quick", action="store_true", help="200 agents, short phases: a smoke run"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--json", action="store_true", help="end with the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run the server with cProfile in every thread; one stats file per thread in DIR, "
        "and the top functions printed (the figures of such a run are not the benchmark's)",
    )
    options = parser.parse_args(argv)
    if options.quick:
        options.agents = min(options.agents, 200)
        options.http_register = min(options.http_register, 50)
        options.hold, options.probe_seconds, options.fanout_probe_seconds = 1.0, 1.0, 1.0
        options.wake_probes = min(options.wake_probes, 5)
    options.http_register = max(0, min(options.http_register, options.agents))
    return options


def setup(database: str, options: argparse.Namespace) -> tuple[str, str, list[Any], list[Any]]:
    """The organisations, keys and the store-registered devices (before the server runs)."""
    organisation = cli_json("org", "create", "bench", "--database", database)
    org_id = organisation["organisation_id"]
    secret = cli_json(
        "device", "provisioning-key", "create", "--org", org_id, "--database", database
    )["provisioning_key"]
    other = cli_json("org", "create", "probes", "--database", database)["organisation_id"]
    probe_secret = cli_json(
        "device", "provisioning-key", "create", "--org", other, "--database", database
    )["provisioning_key"]
    names = [f"agent-{n}" for n in range(options.http_register, options.agents)]
    probes = run_loop(register_in_store(database, probe_secret, [f"probe-{n}" for n in range(16)]))
    return organisation["token"], secret, names, probes


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (e.g. from ``timeout``) unwinds like Ctrl-C, so the server is stopped too."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == [SERVE_PROFILED]:
        serve_profiled(Path(given[1]), given[2:])
        return 0
    options = parse_args(given)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    command = " ".join(["uv run python -m benchmarks.jobs", *given])
    soft, hard = raise_fd_limit(options.agents + 16 + 64 + 256)
    f = Figures(options.agents, client_fd_limit=f"{soft} (hard {hard})", load_before=load_average())
    with contextlib.ExitStack() as stack:
        directory = Path(
            tempfile.mkdtemp(prefix="fleetcloud-bench-jobs-")
            if options.keep
            else stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetcloud-bench-jobs-"))
        )
        path = directory / "fleetcloud.db"
        database = f"sqlite:///{path}"
        token, secret, names, probes = setup(database, options)
        print(f"registering {len(names):,} devices through the store …", flush=True)
        began = time.perf_counter()
        bulk = run_loop(register_in_store(database, secret, names))
        f.store_registered, f.store_register_seconds = len(bulk), time.perf_counter() - began
        log = directory / "server.log"
        server = (
            Server(database, log=log)
            if options.profile is None
            else ProfiledServer(database, log, options.profile.resolve())
        )
        server.start()
        assert server.process is not None
        f.server_fd_limit = open_files_limit(server.process.pid)
        try:
            print(f"registering {options.http_register:,} devices over HTTP …", flush=True)
            began = time.perf_counter()
            http_names = [f"agent-{n}" for n in range(options.http_register)]
            over_http, f.http_register_latencies = run_loop(
                register_over_http(server.port, secret, http_names)
            )
            f.http_registered = len(over_http)
            f.http_register_seconds = time.perf_counter() - began
            fleet = Fleet(server.port, token, over_http + bulk, probes)
            run_loop(simulate(fleet, server, options, f))
        finally:
            server.stop()
        if options.profile is not None:
            print_profiles(options.profile.resolve())
        if f.fanout_job:
            verify_database(path, f, options.agents)
        if options.keep:
            print(f"kept {directory}")
    f.load_after = load_average()
    section = markdown(f, machine(), command, options)
    print("\n" + section)
    if not options.no_write:
        write_docs("jobs", section)
        print(f"\nwrote {DOCS.relative_to(ROOT)}")
    if options.json:
        print(orjson.dumps(summary(f)).decode())
    return 0 if f.fanout_completed and not f.problems else 1


def run_loop(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


if __name__ == "__main__":
    sys.exit(main())
