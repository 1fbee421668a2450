"""Commands benchmark: Kafka → fleetcloud → Mosquitto → device, and MQTT uplinks.

    uv run python -m benchmarks.commands               # updates docs/benchmarks.md
    uv run python -m benchmarks.commands --quick       # a smoke run
    uv run python -m benchmarks.commands --no-write    # print only

It starts a tansu broker (Kafka protocol), a Mosquitto configured by ``fleetcloud mqtt
broker-config`` and ``fleetcloud serve --bus kafka://… --mqtt-url …`` on SQLite, each a
process on a free loopback port, and measures:

1. **latency at a steady rate**: ``PusherService`` (this process) pushes ``--rate``
   commands/s to Kafka for ``--seconds``, spread over ``--devices`` devices; a
   ``mosquitto_sub`` subscribed to every device's command topic stamps each arrival. Push →
   device-receive p50/p99 (the first second is warm-up and not counted).
2. **ceiling**: ``--burst`` commands pushed at once; the rate at which they reach devices.
3. **uplinks**: ``mosquitto_pub -l`` processes publish ``--uplinks`` JSON readings (QoS 0)
   to ``fleetcloud/<id>/channels/bench``; the rate at which they become channel messages
   in the database, next to the **raw** rate of the same publishers to ``mosquitto_sub``
   through the same broker, measured in the same run. The comparison is like for like:
   the same publisher processes, the same lines (same bytes per message), QoS 0 end to
   end, and one subscribing client on the other side in both cases (the connector's one
   MQTT connection; one ``mosquitto_sub``). A third figure is one aiomqtt subscriber that
   does no work: what a Python consumer on the connector's client library gets at best.

Afterwards it checks that every pushed command reached a device and ended ``DELIVERED``
and that every uplink was stored; ``--json`` ends the output with the figures and the
problems found, as one JSON line. The machine is shared by every process here (and by
whatever else runs on it): each phase reports the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import orjson
from tests.servers.fleetcloud import Server
from tests.servers.kafka import tansu_broker
from tests.servers.mosquitto import free_port, mosquitto_broker

from benchmarks._common import (
    DOCS,
    ROOT,
    cli_json,
    cpu_seconds,
    create_devices,
    load_average,
    machine,
    percentile,
    pid_running,
    reference_loop,
    system_busy,
    write_docs,
)
from fleetcloud.commands import CommandMessage, PusherService

TICK = 0.01  # seconds between push batches at a steady rate


@dataclass
class Fleet:
    database: Path
    organisation: str
    devices: list[str]
    token: str = ""


def create_fleet(directory: Path, devices: int) -> Fleet:
    database = directory / "fleet.db"
    organisation, ids = create_devices(f"sqlite:///{database}", devices)
    return Fleet(database, str(organisation["organisation_id"]), ids, str(organisation["token"]))


IDLE_APP = """
def handler(event, context):
    return None
"""


def install_an_app(url: str, fleet: Fleet) -> None:
    """A processor on the fleet's last device, subscribed to a channel nothing here
    writes: with an app installed anywhere, the apps dispatcher reads every channel event
    (those of other devices left undecoded) instead of a gulp every half second."""
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("src/idle/__init__.py", IDLE_APP)
    entry = {"name": "idle", "type": "PRO", "handler": "src.idle.handler"}
    body = {
        "doover_config": {"idle": entry},
        "package": base64.b64encode(package.getvalue()).decode(),
    }
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {fleet.token}"}) as http:
        app = http.post("/api/apps", json=body)
        app.raise_for_status()
        installed = http.post(
            f"/api/apps/{app.json()['id']}/installations",
            json={"agent_id": fleet.devices[-1], "config": {"dv_proc_subscriptions": ["idle"]}},
        )
        if installed.status_code != 409:  # 409: installed by an earlier phase already
            installed.raise_for_status()


# ---------------------------------------------------------------- commands


@dataclass
class Observer:
    """Every device's command topic, seen by one ``mosquitto_sub``: the C client stamps
    each arrival itself (wall-clock time, as the pushes are stamped), so observing costs
    the load generator, which shares the machine with the server, next to nothing."""

    arrived: dict[str, float] = field(default_factory=dict)
    pid: int | None = None

    async def run(self, port: int, user: str, password: str) -> None:
        watcher = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-p", str(port), "-u", user, "-P", password, "-q", "0",
            "-i", "bench-observer", "-t", "fleetcloud/+/commands", "-F", "%U %p",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert watcher.stdout is not None
        self.pid = watcher.pid
        try:
            async for line in watcher.stdout:
                stamp, _, payload = line.partition(b" ")
                self.arrived[orjson.loads(payload)["request_id"]] = float(stamp)
        finally:
            if watcher.returncode is None:
                watcher.kill()
            await watcher.wait()


def command_for(device: str) -> CommandMessage:
    return CommandMessage(
        device_id=device,
        command_type="set_led",
        payload={"state": "on"},
        protocol="mqtt",
        parser_script_ref="json_passthrough.py",
        metadata={"topic": f"fleetcloud/{device}/commands", "qos": 1},
    )


async def steady(
    pusher: PusherService, observer: Observer, devices: list[str], rate: int, seconds: float
) -> dict[str, Any]:
    per_tick = max(int(rate * TICK), 1)
    pushed: dict[str, float] = {}
    tasks: list[asyncio.Task[bool]] = []
    start = time.time()  # wall-clock, as the observer stamps arrivals
    ticks = int(seconds / TICK)
    for tick in range(ticks):
        await asyncio.sleep(max(start + tick * TICK - time.time(), 0))
        for n in range(per_tick):
            command = command_for(devices[(tick * per_tick + n) % len(devices)])
            pushed[command.request_id] = time.time()
            tasks.append(asyncio.ensure_future(pusher.push_command(command)))
    results = await asyncio.gather(*tasks)
    if not all(results):
        print(f"  {results.count(False)} pushes failed", flush=True)
    deadline = time.perf_counter() + 30
    while len(observer.arrived.keys() & pushed.keys()) < len(pushed):
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.05)
    warm = start + 1.0
    latencies = [
        (observer.arrived[rid] - at) * 1000
        for rid, at in pushed.items()
        if at >= warm and rid in observer.arrived
    ]
    return {
        "pushed": len(pushed),
        "received": len(observer.arrived.keys() & pushed.keys()),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "load": load_average(),
    }


async def burst(
    pusher: PusherService, observer: Observer, devices: list[str], count: int
) -> dict[str, Any]:
    commands = [command_for(devices[n % len(devices)]) for n in range(count)]
    start = time.time()  # wall-clock, as the observer stamps arrivals
    accepted = []
    for first in range(0, count, 500):  # at most 500 produce requests in flight
        chunk = commands[first : first + 500]
        results = await asyncio.gather(*(pusher.push_command(c) for c in chunk))
        accepted += [c for c, ok in zip(chunk, results, strict=True) if ok]
    pushed_at = time.time()
    ids = {c.request_id for c in accepted}
    count = len(ids)
    deadline = start + 120
    while len(observer.arrived.keys() & ids) < count:
        if time.time() > deadline:
            break
        await asyncio.sleep(0.05)
    received = [observer.arrived[r] for r in ids if r in observer.arrived]
    elapsed = (max(received) - start) if received else float("nan")
    return {
        "pushed": count,
        "received": len(received),
        "push_rate": count / (pushed_at - start),
        "rate": len(received) / elapsed,
        "load": load_average(),
    }


# ---------------------------------------------------------------- uplinks


def publishers(
    port: int, user: str, password: str, devices: list[str], count: int, topic: str
) -> list[subprocess.Popen[bytes]]:
    per = count // len(devices)
    started = []
    for device in devices:
        process = subprocess.Popen(
            ["mosquitto_pub", "-p", str(port), "-u", user, "-P", password, "-q", "0", "-l",
             "-t", topic.format(device=device)],
            stdin=subprocess.PIPE,
        )  # fmt: skip
        started.append(process)
    lines = b"".join(b'{"seq":%d,"temperature":21.5,"ok":true}\n' % n for n in range(per))
    for process in started:
        assert process.stdin is not None
        process.stdin.write(lines)
        process.stdin.close()
    return started


def raw_rate(port: int, user: str, password: str, devices: list[str], count: int) -> dict[str, Any]:
    """mosquitto_pub → mosquitto_sub through the same broker."""
    per = count // len(devices)
    total = per * len(devices)
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-u", user, "-P", password, "-q", "0",
         "-t", "bench/raw/#", "-C", str(total), "-W", "120"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    start = time.perf_counter()
    pubs = publishers(port, user, password, devices, count, "bench/raw/{device}")
    sub.wait(timeout=150)
    elapsed = time.perf_counter() - start
    for pub in pubs:
        pub.wait(timeout=30)
    return {"count": total, "rate": total / elapsed, "complete": sub.returncode == 0}


async def raw_python_rate(
    port: int, user: str, password: str, devices: list[str], count: int
) -> dict[str, Any]:
    """mosquitto_pub → one aiomqtt subscriber (the connector's client library), same
    broker: what a Python MQTT consumer gets before doing any work."""
    total = (count // len(devices)) * len(devices)
    received = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, username=user, password=password, identifier="bench-raw"
    ) as client:
        await client.subscribe("bench/rawpy/#", qos=0)
        start = time.perf_counter()
        pubs = publishers(port, user, password, devices, count, "bench/rawpy/{device}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(120):
                async for _ in client.messages:
                    received += 1
                    if received == total:
                        break
        elapsed = time.perf_counter() - start
    for pub in pubs:
        pub.wait(timeout=30)
    return {"count": total, "received": received, "rate": received / elapsed}


def stored(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM messages m JOIN channels c ON c.id = m.channel_id "
            "WHERE c.name = 'bench'"
        ).fetchone()
    return int(row[0])


def uplink_rate(
    fleet: Fleet, port: int, user: str, password: str, count: int, pid: int
) -> dict[str, Any]:
    before = stored(fleet.database)
    cpu_before = cpu_seconds(pid)
    total = (count // len(fleet.devices)) * len(fleet.devices)
    start = time.perf_counter()
    pubs = publishers(
        port, user, password, fleet.devices, count, "fleetcloud/{device}/channels/bench"
    )
    last, last_change, now = before, start, start
    while True:
        time.sleep(0.05)
        now = time.perf_counter()
        current = stored(fleet.database)
        if current != last:
            last, last_change = current, now
        if current - before >= total or now - last_change > 5:
            break
    cpu_stored = cpu_seconds(pid)
    for pub in pubs:
        pub.wait(timeout=30)
    landed = last - before
    relayed_at = relayed(fleet.database)  # their channel events are on Kafka
    return {
        "count": total,
        "landed": landed,
        "rate": landed / (last_change - start),
        "load": load_average(),
        "server_cpu_us": (cpu_stored - cpu_before) * 1e6 / max(landed, 1),
        "relayed_s": relayed_at - start,
        "relayed_cpu_us": (cpu_seconds(pid) - cpu_before) * 1e6 / max(landed, 1),
    }


def until_none(database: Path, count_sql: str, timeout: float = 60.0) -> float:
    """Wait until ``count_sql`` counts nothing in the server's database (or the timeout
    passed); returns the ``perf_counter`` time it ended."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
            if conn.execute(count_sql).fetchone()[0] == 0:
                break
        time.sleep(0.05)
    return time.perf_counter()


def settled(database: Path) -> float:
    """Wait until the server is done with what came before (every command's status
    recorded, every event relayed), so that it is not counted in the next phase; returns
    the seconds it took."""
    start = time.perf_counter()
    return (
        until_none(
            database,
            "SELECT (SELECT count(*) FROM outbox) + "
            "(SELECT count(*) FROM commands WHERE status IN ('QUEUED', 'SENT'))",
        )
        - start
    )


def relayed(database: Path) -> float:
    """When the outbox is empty (every event relayed to Kafka), or the timeout passed."""
    return until_none(database, "SELECT count(*) FROM outbox")


# ---------------------------------------------------------------- the run


def statuses(database: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT status, count(*) FROM commands GROUP BY status").fetchall()
    return {str(s): int(c) for s, c in rows}


async def command_phases(
    options: argparse.Namespace,
    fleet: Fleet,
    kafka: str,
    mqtt_port: int,
    secret: str,
    processes: dict[str, int],
    rates: Sequence[int],
    *,
    ceiling: bool,
) -> dict[str, Any]:
    """A warm-up, then a steady phase at each of ``rates``, then the burst if ``ceiling``."""
    pid = processes["server"]
    pusher = PusherService(kafka_bootstrap_servers=kafka, command_topic="device_commands")
    if not await pusher.initialize():
        raise RuntimeError("cannot reach the Kafka broker")
    observer = Observer()
    figures: dict[str, Any] = {"steady": []}
    watching = asyncio.ensure_future(observer.run(mqtt_port, "fleetcloud-connector", secret))
    try:
        await asyncio.sleep(0.5)
        if observer.pid is not None:
            processes["observer"] = observer.pid  # its CPU is reported with the others
        await steady(pusher, observer, fleet.devices, 50, 2.0)  # warm everything up
        for target in rates:
            print(f"steady {target}/s for {options.seconds:g} s (server pid {pid}) …", flush=True)
            before, busy, began = cpu_seconds(pid), system_busy(), time.perf_counter()
            each = {name: cpu_seconds(p) for name, p in processes.items()}
            rate = await steady(pusher, observer, fleet.devices, target, options.seconds)
            took = time.perf_counter() - began
            rate["cores"] = {n: (cpu_seconds(p) - each[n]) / took for n, p in processes.items()}
            rate["rate"] = target
            rate["server_cpu_ms"] = (cpu_seconds(pid) - before) * 1000 / rate["pushed"]
            rate["machine_busy"] = (system_busy() - busy) / took
            figures["steady"].append(rate)
        if ceiling:
            print(f"burst of {options.burst} …", flush=True)
            before = cpu_seconds(pid)
            result = await burst(pusher, observer, fleet.devices, options.burst)
            result["server_cpu_ms"] = (cpu_seconds(pid) - before) * 1000 / result["pushed"]
            figures["burst"] = result
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await pusher.close()
    return figures


@contextlib.contextmanager
def platform(
    fleet: Fleet, broker: dict[str, Any], directory: Path, *, app: bool = False
) -> Iterator[tuple[str, dict[str, int]]]:
    """A fresh tansu broker and ``fleetcloud serve`` on the fleet's database, connected
    to it and to Mosquitto; yields the broker's URL and the pids whose CPU is reported."""
    with tansu_broker() as kafka:
        server = Server(
            f"sqlite:///{fleet.database}",
            extra=("--bus", kafka, "--mqtt-url", str(broker["connector_url"])),
            log=directory / "server.log",
        )
        server.start()
        try:
            if app:
                install_an_app(server.url, fleet)
            assert server.process is not None
            processes = {"server": server.process.pid, "load generator": os.getpid()}
            for name, fragment in (("tansu", kafka.removeprefix("kafka://")),
                                   ("Mosquitto", str(broker["config"]))):  # fmt: skip
                if (found := pid_running(fragment)) is not None:
                    processes[name] = found
            yield kafka, processes
        finally:
            server.stop()


def markdown(figures: dict[str, Any], options: argparse.Namespace, command: str) -> str:
    about = machine()
    steady, ceiling = figures["steady"], figures["burst"]
    uplink, raw, raw_py = figures["uplink"], figures["raw"], figures["raw_python"]
    share = uplink["rate"] / raw["rate"] if raw["rate"] else float("nan")
    share_py = uplink["rate"] / raw_py["rate"] if raw_py["rate"] else float("nan")
    return "\n".join(
        [
            "## Commands and MQTT uplinks: `benchmarks/commands.py`",
            "",
            "```bash",
            "uv run python -m benchmarks.commands                # rewrites this section",
            "uv run python -m benchmarks.commands --quick --no-write  # a smoke run, prints only",
            "```",
            "",
            "tansu (Kafka protocol), Mosquitto (configured by `fleetcloud mqtt broker-config`) and",
            "`fleetcloud serve --bus kafka://… --mqtt-url …` on SQLite, each its own process. The",
            "load generator pushes with `PusherService` over Kafka; one `mosquitto_sub` (the",
            "observer) stamps each command's arrival on the device topics; the ceiling is a",
            "burst pushed at once; uplinks are JSON readings published by `mosquitto_pub -l`",
            "(QoS 0) and counted in the database, next to the same publishers' raw rate through",
            "the broker: the same publisher processes and lines (about 40 bytes each), QoS 0 end",
            "to end and one subscribing client in both cases (the connector's connection;",
            "`mosquitto_sub`).",
            "Each steady rate runs on a fresh broker and server (tansu's memory storage reads",
            "more slowly as its log grows: `benchmarks.tansu`), and so do the burst and uplinks.",
            "With `--app`, one app is installed first (on a device the load does not touch):",
            "the apps dispatcher then reads every channel event back, as in a deployment with",
            "apps; without it, no app is installed and the dispatcher reads in gulps.",
            "Server CPU is the server process's user + system time per command or message.",
            "",
            f"`{command}` — {about['date']}, {about['nproc']} cores ({about['cpu']}), "
            f"Python {about['python']}; tansu, Mosquitto, `fleetcloud serve` (SQLite) and the "
            "load generator all on this machine. Load average before the run: "
            f"{figures['load_before']}. A pure-Python reference loop (10 million additions, "
            f"`benchmarks._common.reference_loop`) took {figures['reference_s']:.2f} s just "
            f"before the run and {figures['reference_after_s']:.2f} s just after: how fast the "
            "machine ran Python at the time.",
            "",
            "| what | figure | target |",
            "|---|---|---|",
            *(
                f"| push → device, steady {r['rate']:,} commands/s over {options.devices} devices "
                f"(Kafka → connector → Mosquitto) | p50 {r['p50_ms']:.1f} ms, p99 "
                f"{r['p99_ms']:.1f} ms (max {r['max_ms']:.0f} ms); "
                f"{r['received']:,}/{r['pushed']:,} received; server CPU "
                f"{r['server_cpu_ms']:.2f} ms/command; whole machine busy "
                f"{r['machine_busy']:.1f} of {about['nproc']} cores | p99 < 50 ms at 1,000/s |"
                for r in steady
            ),
            f"| command ceiling (burst of {ceiling['pushed']:,}) | {ceiling['rate']:,.0f} "
            f"commands/s reach devices ({ceiling['received']:,} received; pushed at "
            f"{ceiling['push_rate']:,.0f}/s; server CPU {ceiling['server_cpu_ms']:.2f} "
            "ms/command) | |",
            f"| MQTT uplink → channel messages (QoS 0, {len(options.devices_for_uplinks)} "
            f"publishers) | {uplink['rate']:,.0f} msg/s ({uplink['landed']:,}/"
            f"{uplink['count']:,} stored; server CPU {uplink['server_cpu_us']:.0f} µs/msg; all "
            f"relayed to Kafka {uplink['relayed_s']:.1f} s after the first publish, "
            f"{uplink['relayed_cpu_us']:.0f} µs/msg by then) | ≥ 10,000 msg/s |",
            f"| Mosquitto raw, same publishers → `mosquitto_sub` (C) | {raw['rate']:,.0f} msg/s "
            f"| uplink ≥ 1/3 of it: {share:.0%} |",
            f"| Mosquitto raw, same publishers → one aiomqtt subscriber (Python, no work) | "
            f"{raw_py['rate']:,.0f} msg/s ({raw_py['received']:,}/{raw_py['count']:,}) "
            f"| uplink / this: {share_py:.0%} |",
            "",
            *(
                f"CPU in use during the steady {r['rate']:,}/s phase, in cores: "
                + ", ".join(f"{name} {cores:.2f}" for name, cores in r["cores"].items())
                + "."
                for r in steady
            ),
            "",
            f"Final statuses: {figures['statuses']}. Load average (1/5/15 min) after each "
            f"phase: steady {', '.join(r['load'] for r in steady)}; burst {ceiling['load']}; "
            f"uplink {uplink['load']}. The uplinks started once the burst was fully recorded "
            f"and relayed ({figures['settle_s']:.1f} s after its last command arrived). "
            "Problems found: "
            f"{'; '.join(figures['problems']) or 'none'}.",
        ]
    )


def problems(figures: dict[str, Any]) -> list[str]:
    """What went wrong in the run, as opposed to how fast it went."""
    found = [
        f"steady {r['rate']}/s: {r['received']} of {r['pushed']} commands reached a device"
        for r in figures["steady"]
        if r["received"] != r["pushed"]
    ]
    burst = figures["burst"]
    if burst["received"] != burst["pushed"] or burst["pushed"] == 0:
        found.append(f"burst: {burst['received']} of {burst['pushed']} commands arrived")
    pushed = sum(r["pushed"] for r in figures["steady"]) + burst["pushed"]
    delivered = figures["statuses"].get("DELIVERED", 0)
    if delivered < pushed or set(figures["statuses"]) != {"DELIVERED"}:
        found.append(f"{pushed} pushed after warm-up, final statuses {figures['statuses']}")
    uplink = figures["uplink"]
    if uplink["landed"] != uplink["count"]:
        found.append(f"uplinks: {uplink['landed']} of {uplink['count']} stored")
    if not figures["raw"]["complete"]:
        found.append("the raw mosquitto_sub run did not receive every message")
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.commands")
    parser.add_argument(
        "--rates",
        type=lambda text: [int(r) for r in text.split(",")],
        default=[250, 1000],
        help="commands/s of the steady phases, comma-separated",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the steady phase")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--uplinks", type=int, default=100_000)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument(
        "--app",
        action="store_true",
        help="install an app on one device first: the apps dispatcher then reads every "
        "channel event, as in a deployment with apps",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--json", action="store_true", help="end with the figures as JSON")
    options = parser.parse_args(argv)
    if options.quick:
        options.seconds, options.burst, options.uplinks, options.devices = 2.0, 1000, 5000, 5
        options.rates = [250]
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    command = " ".join(
        ["uv run python -m benchmarks.commands", *(sys.argv[1:] if argv is None else argv)]
    )
    figures: dict[str, Any] = {"load_before": load_average(), "reference_s": reference_loop()}
    with tempfile.TemporaryDirectory(prefix="fleetcloud-bench-") as raw_dir:
        directory = Path(raw_dir)
        fleet = create_fleet(directory, options.devices)
        options.devices_for_uplinks = fleet.devices[: options.publishers]
        mqtt_port = free_port()
        run_as = ["--run-as", "root"] if os.geteuid() == 0 else []
        written = cli_json(
            "mqtt", "broker-config", "--org", fleet.organisation, "--out", str(directory / "mqtt"),
            "--port", str(mqtt_port), *run_as, "--database", f"sqlite:///{fleet.database}",
        )  # fmt: skip
        secret = str(written["connector_url"]).split(":")[2].split("@")[0]
        uplinkers = Fleet(fleet.database, fleet.organisation, options.devices_for_uplinks)
        with mosquitto_broker(Path(written["config"]), mqtt_port):
            # Each steady rate on a fresh broker: tansu's memory storage reads more slowly
            # as its log grows (``benchmarks.tansu``), so a phase must not pay for the
            # batches of the ones before it.
            figures["steady"] = []
            for rate in options.rates:
                with platform(fleet, written, directory, app=options.app) as (kafka, processes):
                    figures["steady"] += asyncio.run(command_phases(
                        options, fleet, kafka, mqtt_port, secret, processes, [rate],
                        ceiling=False,
                    ))["steady"]  # fmt: skip
            with platform(fleet, written, directory, app=options.app) as (kafka, processes):
                figures["burst"] = asyncio.run(command_phases(
                    options, fleet, kafka, mqtt_port, secret, processes, [], ceiling=True
                ))["burst"]  # fmt: skip
                figures["settle_s"] = settled(fleet.database)
                print(f"uplinks: {options.uplinks} …", flush=True)
                figures["uplink"] = uplink_rate(
                    uplinkers, mqtt_port, "fleetcloud-connector", secret, options.uplinks,
                    processes["server"],
                )  # fmt: skip
                figures["raw"] = raw_rate(
                    mqtt_port, "fleetcloud-connector", secret, options.devices_for_uplinks,
                    options.uplinks,
                )  # fmt: skip
                figures["raw_python"] = asyncio.run(raw_python_rate(
                    mqtt_port, "fleetcloud-connector", secret, options.devices_for_uplinks,
                    options.uplinks,
                ))  # fmt: skip
        figures["statuses"] = statuses(fleet.database)
        figures["reference_after_s"] = reference_loop()
    figures["problems"] = problems(figures)
    section = markdown(figures, options, command)
    print("\n" + section)
    if not options.no_write:
        write_docs("commands", section)
        print(f"\nwrote {DOCS.relative_to(ROOT)}")
    if options.json:
        print(json.dumps(figures))
    return 1 if figures["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
