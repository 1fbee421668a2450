"""Apps benchmark: channel events → dispatcher → warm workers → data API, end to end.

    uv run python -m benchmarks.apps               # updates docs/benchmarks.md
    uv run python -m benchmarks.apps --quick       # a smoke run
    uv run python -m benchmarks.apps --no-write    # print only

It runs ``fleetcloud serve`` on SQLite (a process on a free loopback port, with its
dispatcher and worker pool), deploys a processor that **reads and sets a tag** on every
message (``count = get_tag("count", 0) + 1``; one tag flush through the data API per
invocation), installs it on ``--devices`` devices subscribed to ``bench``, and measures:

1. **throughput** with warm workers: ``--messages`` messages published at once (batch
   ``POST /api/agents/messages``, spread over the devices); invocations/s from the first
   publish until the last invocation is in the invocation log;
2. **latency** at a steady ``--rate`` events/s for ``--seconds``: each message is one
   ``POST …/messages``; publish (before the request) → handler start (the worker's clock
   just before it calls ``handler``), p50/p99;
3. **cold start**: a new version of a small app, invoked once (``POST …/invoke?wait``):
   request → handler start, with the pool's pre-started spare worker; and, measured on a
   ``WorkerPool`` in this process, the same for a worker started from nothing.

Afterwards it checks that every message was handled once (the tag counts add up). The
machine is shared by everything here (server, workers, this client): each phase reports
the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tests.servers.fleetcloud import Server

from benchmarks._common import DOCS, ROOT, create_devices, machine, percentile, write_docs
from fleetcloud.apps.packaging import extract
from fleetcloud.apps.pool import VersionSpec, WorkerPool
from fleetcloud.apps.settings import AppsSettings

COUNTER = """
from fleetcloud.sdk.processor import Application, run_app


class Counter(Application):
    async def on_message_create(self, event):
        count = await self.get_tag("count", 0)
        await self.set_tag("count", count + 1)


def handler(event, context):
    run_app(Counter(), event, context)
"""

COLD = """
from fleetcloud.sdk.processor import Application, run_app

VERSION = {version}


class Cold(Application):
    async def on_manual_invoke(self, event):
        await self.set_tag("version", VERSION)


def handler(event, context):
    run_app(Cold(), event, context)
"""


def load() -> float:
    return os.getloadavg()[0]


def package(name: str, source: str) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"src/{name}/__init__.py", source)
    return base64.b64encode(buffer.getvalue()).decode()


def deploy_body(name: str, source: str, memory: int = 128) -> dict[str, Any]:
    entry = {
        "name": name,
        "type": "PRO",
        "handler": f"src.{name}.handler",
        "lambda_config": {"Timeout": 30, "MemorySize": memory},
    }
    return {"doover_config": {name: entry}, "package": package(name, source)}


@dataclass
class Fleet:
    database: Path
    token: str
    devices: list[str]


def create_fleet(directory: Path, devices: int) -> Fleet:
    database = directory / "apps.db"
    organisation, ids = create_devices(f"sqlite:///{database}", devices)
    return Fleet(database, organisation["token"], ids)


class Log:
    """The invocation log, read straight from the server's SQLite file."""

    def __init__(self, database: Path) -> None:
        self.conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)

    def handled(self, op: str = "on_message_create") -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM app_invocations WHERE op = ? AND status = 'OK'", (op,)
        ).fetchone()
        return int(row[0])

    def starts(self, event_ids: Sequence[str]) -> dict[str, float]:
        """Handler start (Unix ms) of each event's first attempt."""
        found: dict[str, float] = {}
        wanted = list(event_ids)
        for first in range(0, len(wanted), 500):
            chunk = wanted[first : first + 500]
            marks = ", ".join("?" * len(chunk))
            query = "SELECT event_id, started_us FROM app_invocations WHERE attempt = 1 "
            query += f"AND event_id IN ({marks})"  # "?" placeholders only
            rows = self.conn.execute(
                query,
                chunk,
            )
            found.update((str(e), s / 1000) for e, s in rows)
        return found

    def failures(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM app_invocations WHERE status NOT IN ('OK', 'SKIPPED')"
        ).fetchone()
        return int(row[0])


def wait_until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


# ---------------------------------------------------------------- phases


def setup_counter(http: httpx.Client, fleet: Fleet) -> list[str]:
    app = http.post("/api/apps", json=deploy_body("counter", COUNTER)).json()
    installations = []
    for device in fleet.devices:
        found = http.post(
            f"/api/apps/{app['id']}/installations",
            json={"agent_id": device, "config": {"dv_proc_subscriptions": ["bench"]}},
        )
        found.raise_for_status()
        installations.append(found.json()["id"])
    return installations


def throughput(http: httpx.Client, fleet: Fleet, log: Log, messages: int) -> dict[str, Any]:
    before = log.handled()
    items = [
        {
            "agent_id": fleet.devices[n % len(fleet.devices)],
            "channel_name": "bench",
            "data": {"n": n},
        }
        for n in range(messages)
    ]
    loadavg = load()
    started = time.perf_counter()
    for first in range(0, messages, 500):
        http.post("/api/agents/messages", json={"items": items[first : first + 500]})
    done = wait_until(lambda: log.handled() - before >= messages, 300)
    elapsed = time.perf_counter() - started
    return {
        "messages": messages,
        "handled": log.handled() - before,
        "complete": done,
        "seconds": round(elapsed, 2),
        "per_s": round(messages / elapsed),
        "load": round(loadavg, 2),
    }


def latency(
    http: httpx.Client, fleet: Fleet, log: Log, rate: int, seconds: float
) -> dict[str, Any]:
    sent: dict[str, float] = {}
    loadavg = load()
    count = int(rate * seconds)
    started = time.perf_counter()
    for n in range(count):
        due = started + n / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        device = fleet.devices[n % len(fleet.devices)]
        at = time.time() * 1000
        reply = http.post(f"/api/agents/{device}/channels/bench/messages", json={"data": {"n": n}})
        sent[str(reply.json()["id"])] = at
    achieved = count / (time.perf_counter() - started)
    wait_until(lambda: len(log.starts(list(sent))) >= count, 120)
    starts = log.starts(list(sent))
    measured = [starts[e] - sent[e] for e in sent if e in starts][int(rate) :]  # skip warm-up
    return {
        "rate": rate,
        "achieved": round(achieved, 1),
        "events": count,
        "handled": len(starts),
        "p50_ms": round(percentile(measured, 50), 1),
        "p99_ms": round(percentile(measured, 99), 1),
        "max_ms": round(max(measured), 1),
        "load": round(loadavg, 2),
    }


def cold_starts(http: httpx.Client, fleet: Fleet, runs: int) -> dict[str, Any]:
    http.post("/api/apps", json=deploy_body("cold", COLD.format(version=0)))
    app = http.get("/api/apps").json()
    app_id = next(a["id"] for a in app if a["name"] == "cold")
    installed = http.post(
        f"/api/apps/{app_id}/installations", json={"agent_id": fleet.devices[0]}
    ).json()
    # the install's on_deployment runs first; an invoke that waits is queued behind it, so
    # no invocation of the first version is still to come when the next one is deployed
    http.post(f"/api/apps/installations/{installed['id']}/invoke?wait=60", json={})
    times, totals, loads = [], [], []
    for version in range(1, runs + 1):
        http.post("/api/apps", json=deploy_body("cold", COLD.format(version=version)))
        time.sleep(2.5)  # the routing reload, and a spare worker started again
        loads.append(load())
        at = time.time() * 1000
        answer = http.post(f"/api/apps/installations/{installed['id']}/invoke?wait=60", json={})
        totals.append(time.time() * 1000 - at)
        invocation = answer.json()["invocation"]
        assert invocation["summary"]["cold_start"], invocation
        times.append(invocation["started_ms"] - at)
    return {
        "runs": runs,
        "p50_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "total_p50_ms": round(statistics.median(totals), 1),
        "load": round(statistics.mean(loads), 2),
    }


async def process_cold_start(directory: Path, runs: int) -> dict[str, Any]:
    """A worker started from nothing (no spare): spawn, import the SDK, load, invoke."""
    settings = AppsSettings(cache_dir=directory / "pool", spare_workers=0)
    times = []
    async with WorkerPool(settings) as pool:
        for run in range(runs):
            data = base64.b64decode(package("fresh", COLD.format(version=run)))
            root = extract(directory / "pool" / "packages", f"{run + 1:064x}", data)
            spec = VersionSpec(run + 1, root, "src.fresh.handler", 30, 128)
            envelope = {"op": "on_schedule", "d": {"upgrade": {"agent_id": "1", "app_key": "f"}}}
            at = time.time()
            result = await pool.invoke(spec, envelope, "http://127.0.0.1:9")
            times.append((result.started_us / 1000) - at * 1000)
    return {"p50_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


# ---------------------------------------------------------------- report


def markdown(figures: dict[str, Any], options: argparse.Namespace, command: str) -> str:
    info = figures["machine"]
    through, steady, cold = figures["throughput"], figures["latency"], figures["cold"]
    fresh = figures["process_cold"]
    rows = [
        ("invocations/s, warm workers (read + set a tag)", f"**{through['per_s']}**",
         "≥ 500", f"{through['messages']} messages over {options.devices} devices in "
         f"{through['seconds']} s; load {through['load']}"),
        (f"publish → handler start at {steady['rate']} events/s",
         f"p50 **{steady['p50_ms']} ms**, p99 **{steady['p99_ms']} ms**", "p99 < 50 ms",
         f"{steady['events']} events at {steady['achieved']}/s, max {steady['max_ms']} ms; "
         f"load {steady['load']}"),
        ("cold start: invoke → handler start, new version", f"p50 **{cold['p50_ms']} ms**",
         "< 500 ms", f"{cold['runs']} versions, max {cold['max_ms']} ms, whole request "
         f"{cold['total_p50_ms']} ms; pre-started spare worker; load {cold['load']}"),
        ("cold start, no spare: new process → handler start", f"p50 {fresh['p50_ms']} ms",
         "", f"max {fresh['max_ms']} ms (Python start + SDK import)"),
    ]  # fmt: skip
    table = "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    return f"""## Apps (`benchmarks/apps.py`)

`{command}` — {info["date"]}, {info["nproc"]} cores ({info["cpu"]}), Python
{info["python"]}, SQLite {info["sqlite"]}. `fleetcloud serve` on SQLite with its dispatcher
and worker pool (defaults: {figures["settings"]}); the client, the server and the workers
share the machine. Load average (1 min) before: {figures["load_before"]}, after:
{figures["load_after"]}.

| what | measured | target | notes |
|---|---|---|---|
{table}

Every message was handled exactly once: {figures["counted"]} tag increments for
{figures["expected"]} messages; {figures["failures"]} failed invocations.
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.apps")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=100, help="events/s of the latency phase")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON last")
    options = parser.parse_args(argv)
    if options.quick:
        options.devices, options.messages, options.seconds, options.cold_runs = 2, 200, 2.0, 1
    return options


def counted(http: httpx.Client, fleet: Fleet) -> int:
    total = 0
    for device in fleet.devices:
        tags = http.get(f"/api/agents/{device}/channels/tag_values/aggregate").json()["data"]
        total += int(tags.get("counter", {}).get("count", 0))
    return total


def run(options: argparse.Namespace, directory: Path) -> dict[str, Any]:
    fleet = create_fleet(directory, options.devices)
    settings = AppsSettings()
    os.environ["FLEETCLOUD_APPS_CACHE_DIR"] = str(directory / "cache")
    server = Server(f"sqlite:///{fleet.database}", log=directory / "server.log")
    server.start()
    figures: dict[str, Any] = {
        "settings": f"max_workers {settings.max_workers}, per_version {settings.per_version}, "
        f"spare_workers {settings.spare_workers}",
    }
    headers = {"Authorization": f"Bearer {fleet.token}"}
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            setup_counter(http, fleet)
            log = Log(fleet.database)
            warm = throughput(http, fleet, log, options.devices * 4)  # warm every worker
            print("throughput …", flush=True)
            figures["throughput"] = throughput(http, fleet, log, options.messages)
            print("latency …", flush=True)
            figures["latency"] = latency(http, fleet, log, options.rate, options.seconds)
            print("cold starts …", flush=True)
            figures["cold"] = cold_starts(http, fleet, options.cold_runs)
            figures["expected"] = (
                warm["messages"] + options.messages + int(options.rate * options.seconds)
            )
            figures["counted"] = counted(http, fleet)
            figures["failures"] = log.failures()
    finally:
        server.stop()
    figures["process_cold"] = asyncio.run(process_cold_start(directory, options.cold_runs))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    command = " ".join(
        ["uv run python -m benchmarks.apps", *(sys.argv[1:] if argv is None else argv)]
    )
    figures: dict[str, Any] = {"machine": machine(), "load_before": round(load(), 2)}
    with tempfile.TemporaryDirectory(prefix="fleetcloud-bench-apps-") as raw:
        figures.update(run(options, Path(raw)))
    figures["load_after"] = round(load(), 2)
    section = markdown(figures, options, command)
    print("\n" + section)
    if not options.no_write:
        write_docs("apps", section)
        print(f"\nwrote {DOCS.relative_to(ROOT)}")
    if options.json:
        print(json.dumps(figures))
    complete = figures["counted"] == figures["expected"] and figures["failures"] == 0
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
