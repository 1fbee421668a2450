"""Ingest benchmark: how fast a real ``fleetcloud serve`` persists channel messages.

    uv run python -m benchmarks.ingest                 # 5 s per phase; updates docs/benchmarks.md
    uv run python -m benchmarks.ingest --seconds 10    # longer phases
    uv run python -m benchmarks.ingest --quick         # a couple of seconds, a smoke run
    uv run python -m benchmarks.ingest --no-write      # print only, leave the docs alone

It starts ``fleetcloud serve`` as a subprocess on a SQLite file in a temporary directory
(no demo), creates an organisation and a few devices with the CLI, and measures, each
sustained for ``--seconds`` after a short warm-up:

1. **batch**: messages/s acknowledged through ``POST /api/agents/messages`` (``--batch``
   items per request, spread over ``--channels`` channels of the devices);
2. **single**: requests/s through ``POST /api/agents/{id}/channels/{name}/messages``, one
   message each, with p50/p99 latency;
3. **raw SQLite**: the ceiling on this machine — stdlib ``sqlite3`` (WAL,
   ``synchronous=NORMAL``) inserting equivalent rows into the same ``messages`` table
   (``WITHOUT ROWID``, primary key ``(channel_id, id)``) with ``executemany`` in transactions
   of the same batch size, plus one aggregate update per channel per transaction.

The load generator is this process: a minimal HTTP/1.1 client on asyncio (uvloop when
installed) with keep-alive connections and request bytes built once up front, so that it
costs far less CPU than the server. Each phase reports the CPU both processes used, as a
share of one core, so the reader can see which side was the limit.

Afterwards the server is stopped and the database checked: the ``messages`` table holds
exactly the acknowledged messages, and every channel's aggregate equals the data of the
channel's last (highest id) acknowledged message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tests.servers.fleetcloud import Server

from benchmarks._common import (
    DOCS,
    ROOT,
    Connection,
    cpu_seconds,
    create_devices,
    machine,
    system_busy,
    write_docs,
)
from fleetcloud.core.merge import merge_patch
from fleetcloud.store import open_store
from fleetcloud.store.ops import Fetch, Work
from fleetcloud.store.schema import MIGRATIONS

# ---------------------------------------------------------------- what is published


def reading(seq: int) -> dict[str, Any]:
    """One message's data: a sensor reading, ~120 bytes of JSON. Every reading has the same
    keys and no nulls, so a channel's aggregate is exactly its last message's data."""
    return {
        "seq": seq,
        "temperature": round(15 + (seq % 200) / 10, 1),
        "humidity": 30 + seq % 50,
        "state": {"mode": "auto" if seq % 3 else "eco", "battery": 100 - seq % 100},
        "ok": seq % 7 != 0,
    }


@dataclass
class Fleet:
    url: str
    port: int
    token: str
    channels: list[tuple[str, str]]  # (agent id, channel name)


@dataclass
class Ledger:
    """What the server acknowledged, to check the database against afterwards."""

    acked: int = 0
    errors: int = 0
    first_error: str = ""
    last: dict[int, tuple[int, Any]] = field(default_factory=dict)  # channel → (id, data)

    def ack(self, channel: int, message_id: int, data: Any) -> None:
        known = self.last.get(channel)
        if known is None or message_id > known[0]:
            self.last[channel] = (message_id, data)

    def error(self, status: int, body: bytes) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = f"HTTP {status}: {body[:300]!r}"


def post(fleet: Fleet, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{fleet.port}\r\n"
        f"Authorization: Bearer {fleet.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# ---------------------------------------------------------------- measuring a phase


@dataclass
class Phase:
    name: str
    unit: str
    count: int  # completions inside the measured window
    seconds: float
    server_cpu: float | None  # share of one core
    client_cpu: float | None
    latencies: list[float] = field(default_factory=list)
    concurrency: int = 0
    other_cpu: float | None = None  # what the rest of the machine used meanwhile, in cores
    runs: list[float] = field(default_factory=list)  # every run's rate, when repeated

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def drive(
    name: str,
    unit: str,
    fleet: Fleet,
    server_pid: int,
    connections: int,
    step: Callable[[Connection, Ledger], Any],
    ledger: Ledger,
    *,
    warmup: float,
    seconds: float,
) -> Phase:
    """Run ``step`` on ``connections`` connections; count what completes in the window."""
    conns = [await Connection.open(fleet.port) for _ in range(connections)]
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    stop = start + seconds
    counted = 0
    latencies: list[float] = []

    async def worker(conn: Connection) -> None:
        nonlocal counted
        while (sent := loop.time()) < stop:
            done = await step(conn, ledger)
            now = loop.time()
            if start <= now < stop:
                counted += done
                latencies.append(now - sent)

    async def sample() -> list[float]:
        await asyncio.sleep(max(start - loop.time(), 0))
        before = [cpu_seconds(server_pid), time.process_time(), system_busy()]
        await asyncio.sleep(max(stop - loop.time(), 0))
        after = [cpu_seconds(server_pid), time.process_time(), system_busy()]
        return [(b - a) / seconds for a, b in zip(before, after, strict=True)]

    try:
        sampling = asyncio.create_task(sample())
        await asyncio.gather(*(worker(conn) for conn in conns))
        server, client, busy = await sampling
    finally:
        for conn in conns:
            conn.close()
    other = max(busy - server - client, 0.0)
    return Phase(name, unit, counted, seconds, server, client, latencies, connections, other)


def batch_step(fleet: Fleet, batch: int, variants: int) -> Callable[[Connection, Ledger], Any]:
    """Requests of ``batch`` items spread round-robin over the channels."""
    n = len(fleet.channels)
    bodies: list[tuple[bytes, list[Any]]] = []
    seq = 0
    for _ in range(variants):
        items, datas = [], []
        for index in range(batch):
            agent_id, name = fleet.channels[index % n]
            data = reading(seq)
            seq += 1
            items.append({"agent_id": agent_id, "channel_name": name, "data": data})
            datas.append(data)
        bodies.append((post(fleet, "/api/agents/messages", orjson.dumps({"items": items})), datas))
    # the position of each channel's last item in a request: its id is the channel's highest
    last_positions = [
        (channel, max(i for i in range(batch) if i % n == channel))
        for channel in range(min(n, batch))
    ]
    counter = 0

    async def step(conn: Connection, ledger: Ledger) -> int:
        nonlocal counter
        raw, datas = bodies[counter % variants]
        counter += 1
        status, body = await conn.request(raw)
        if status != 200:
            ledger.error(status, body)
            return 0
        answer = orjson.loads(body)
        ledger.acked += answer["succeeded"]
        if answer["failed"]:
            ledger.error(status, body)
        items = answer["items"]
        for channel, position in last_positions:
            item = items[position]
            if item["success"]:
                ledger.ack(channel, int(item["message_id"]), datas[position])
        return int(answer["succeeded"])

    return step


def single_step(fleet: Fleet, variants: int) -> Callable[[Connection, Ledger], Any]:
    """One message per request, cycling over the channels."""
    n = len(fleet.channels)
    requests = []
    for seq in range(variants):
        agent_id, name = fleet.channels[seq % n]
        data = reading(1_000_000 + seq)
        path = f"/api/agents/{agent_id}/channels/{name}/messages"
        requests.append((post(fleet, path, orjson.dumps({"data": data})), seq % n, data))
    counter = 0

    async def step(conn: Connection, ledger: Ledger) -> int:
        nonlocal counter
        raw, channel, data = requests[counter % variants]
        counter += 1
        status, body = await conn.request(raw)
        if status != 200:
            ledger.error(status, body)
            return 0
        ledger.acked += 1
        ledger.ack(channel, int(orjson.loads(body)["id"]), data)
        return 1

    return step


# ---------------------------------------------------------------- the raw SQLite ceiling


def raw_sqlite(path: Path, *, batch: int, channels: int, seconds: float) -> Phase:
    """stdlib sqlite3 inserting the same rows into the same schema, as fast as it can."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for migration in MIGRATIONS:
        for statement in migration.sqlite:
            conn.execute(statement)
    channel_ids = list(range(1, channels + 1))
    conn.executemany(
        "INSERT INTO channels (id, agent_id, name, is_private) VALUES (?, ?, ?, 0)",
        [(cid, 1000 + cid % 5, f"sensors/{cid}") for cid in channel_ids],
    )
    datas = [orjson.dumps(reading(seq)).decode() for seq in range(batch)]
    aggregates = [datas[max(i for i in range(batch) if i % channels == c)] for c in range(channels)]
    insert = (
        "INSERT INTO messages (channel_id, id, author_id, data, attachments) VALUES (?, ?, ?, ?, ?)"
    )
    update = "UPDATE channels SET aggregate = ?, last_updated = ? WHERE id = ?"
    next_id = 1 << 40
    rows = 0
    cpu0, busy0 = time.process_time(), system_busy()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        stamp = int(time.time() * 1000)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            insert,
            [(channel_ids[i % channels], next_id + i, 7, datas[i], None) for i in range(batch)],
        )
        conn.executemany(
            update, [(aggregates[c], stamp, channel_ids[c]) for c in range(min(channels, batch))]
        )
        conn.execute("COMMIT")
        next_id += batch
        rows += batch
    elapsed = time.perf_counter() - started
    cpu = (time.process_time() - cpu0) / elapsed
    other = max((system_busy() - busy0) / elapsed - cpu, 0.0)
    stored = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn.close()
    if stored != rows:
        raise AssertionError(f"raw SQLite stored {stored} rows, not {rows}")
    return Phase("raw sqlite3", "rows/s", rows, elapsed, None, cpu, other_cpu=other)


# ---------------------------------------------------------------- set-up and checking


def create_fleet(database: str, devices: int, channels: int) -> tuple[str, list[tuple[str, str]]]:
    """An organisation and ``devices`` devices (created by the CLI, in parallel)."""
    organisation, agent_ids = create_devices(database, devices, prefix="meter-")
    names = [
        (agent_ids[c % devices], f"sensors/line-{c // devices}/reading") for c in range(channels)
    ]
    return organisation["token"], names


def _channel_state() -> Work[tuple[int, list[tuple[Any, ...]]]]:
    rows = yield Fetch("SELECT count(*) FROM messages")
    states = yield Fetch(
        "SELECT c.agent_id, c.name, c.aggregate, "
        "(SELECT max(m.id) FROM messages m WHERE m.channel_id = c.id) FROM channels c"
    )
    return int(rows[0][0]), states


def _message_data(agent_id: int, name: str, message_id: int) -> Work[Any]:
    rows = yield Fetch(
        "SELECT m.data FROM messages m JOIN channels c ON c.id = m.channel_id "
        "WHERE c.agent_id = ? AND c.name = ? AND m.id = ?",
        (agent_id, name, message_id),
    )
    return orjson.loads(rows[0][0]) if rows else None


async def verify(database: str, fleet: Fleet, ledger: Ledger) -> list[str]:
    """What is wrong with the database after the run ([] when it is all right)."""
    problems = []
    async with open_store(database) as store:
        count, states = await store.read(_channel_state())
        if count != ledger.acked:
            problems.append(f"{count} rows in messages, but {ledger.acked} were acknowledged")
        by_key = {
            (str(a), n): (orjson.loads(agg) if agg else None, top) for a, n, agg, top in states
        }
        for index, key in enumerate(fleet.channels):
            expected = ledger.last.get(index)
            if expected is None:
                problems.append(f"nothing was acknowledged on {key}")
                continue
            aggregate, top = by_key.get(key, (None, None))
            if top != expected[0]:
                problems.append(f"{key}: highest id {top}, last acknowledged {expected[0]}")
            if aggregate != expected[1]:
                problems.append(f"{key}: aggregate {aggregate} != last data {expected[1]}")
            stored = await store.read(_message_data(int(key[0]), key[1], expected[0]))
            if merge_patch(None, stored) != aggregate:
                problems.append(f"{key}: the last message's stored data is not the aggregate")
    if ledger.errors:
        problems.append(f"{ledger.errors} failed requests/items; first: {ledger.first_error}")
    return problems


# ---------------------------------------------------------------- reporting


def pct(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.0f} %"


def latency(phase: Phase) -> str:
    if not phase.latencies:
        return "—"
    return f"{phase.percentile(50):.1f} / {phase.percentile(99):.1f} ms"


def runs(phase: Phase) -> str:
    if len(phase.runs) < 2:
        return ""
    return " (runs: " + " / ".join(f"{rate:,.0f}" for rate in phase.runs) + ")"


def describe(phases: Sequence[Phase], options: argparse.Namespace) -> list[list[str]]:
    """One row per phase: what, rate, latency, server CPU, client CPU, rest of machine."""
    batch, single, raw = phases
    return [
        [
            f"batch `POST /api/agents/messages`, {options.batch} items/request over "
            f"{options.channels} channels, {batch.concurrency} connections",
            f"**{batch.rate:,.0f} msg/s** ({batch.rate / options.batch:,.1f} req/s){runs(batch)}",
            latency(batch),
            pct(batch.server_cpu),
            pct(batch.client_cpu),
            pct(batch.other_cpu),
        ],
        [
            f"single `POST /api/agents/{{id}}/channels/{{name}}/messages`, "
            f"{single.concurrency} connections",
            f"**{single.rate:,.0f} req/s**{runs(single)}",
            latency(single),
            pct(single.server_cpu),
            pct(single.client_cpu),
            pct(single.other_cpu),
        ],
        [
            f"raw `sqlite3` ceiling: same `messages` table, WAL, `synchronous=NORMAL`, "
            f"{options.batch}-row `executemany` transactions + {options.channels} aggregate "
            "updates each",
            f"**{raw.rate:,.0f} rows/s**{runs(raw)}",
            "—",
            "—",
            pct(raw.client_cpu),
            pct(raw.other_cpu),
        ],
    ]


TARGETS: tuple[tuple[str, Callable[[Phase, Phase, Phase], bool]], ...] = (
    ("batch ≥ 20,000 msg/s", lambda b, s, r: b.rate >= 20_000),
    ("batch ≥ 1/3 of the raw insert rate", lambda b, s, r: b.rate >= r.rate / 3),
    ("single ≥ 2,000 req/s", lambda b, s, r: s.rate >= 2_000),
)


def markdown(
    phases: Sequence[Phase],
    facts: dict[str, str],
    command: str,
    options: argparse.Namespace,
    checks: list[str],
) -> str:
    batch, single, raw = phases
    lines = [
        f"Measured {facts['date']} with `{command}`",
        f"({options.seconds:g} s per phase after a {options.warmup:g} s warm-up"
        + (f"; median of {options.repeat} runs" if options.repeat > 1 else "")
        + ").",
        "",
        f"Machine: {facts['nproc']} cores ({facts['cpu']}), {facts['os']}, "
        f"Python {facts['python']}, SQLite {facts['sqlite']}.",
        "",
        "| what | rate | latency p50 / p99 | server CPU | client CPU | rest of the machine |",
        "|---|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in describe(phases, options)),
        "",
        f"Batch ingest reaches **{batch.rate / raw.rate:.0%}** of the raw insert rate.",
        "Targets: "
        + "; ".join(
            f"{name}: {'met' if ok(batch, single, raw) else '**not met**'}" for name, ok in TARGETS
        )
        + ".",
        "",
        "Check after the run: "
        + (
            "passed — the `messages` table holds exactly the acknowledged messages, and "
            "every channel's aggregate equals its last acknowledged message's data."
            if not checks
            else "**FAILED** — " + "; ".join(checks)
        ),
    ]
    return "\n".join(lines)


def table(phases: Sequence[Phase]) -> str:
    header = (
        f"{'phase':<28} {'rate':>16}  {'p50 / p99':>16}  {'server':>6} {'client':>6} {'other':>6}"
    )
    out = [header]
    for phase in phases:
        out.append(
            f"{phase.name:<28} {phase.rate:>9,.0f} {phase.unit:<6}  {latency(phase):>16}  "
            f"{pct(phase.server_cpu):>6} {pct(phase.client_cpu):>6} {pct(phase.other_cpu):>6}"
        )
    return "\n".join(out)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured lead-in per phase")
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke run")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--json", action="store_true", help="end with the figures as JSON")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each phase this often; report the median"
    )
    parser.add_argument("--batch", type=int, default=500, help="items per batch request")
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--batch-connections", type=int, default=4)
    parser.add_argument("--single-connections", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args(argv)
    if options.quick:
        options.seconds, options.warmup, options.devices, options.repeat = 0.7, 0.2, 2, 1
    return options


def median(phases: list[Phase]) -> Phase:
    """The run with the median rate, knowing the others' rates."""
    chosen = sorted(phases, key=lambda phase: phase.rate)[(len(phases) - 1) // 2]
    chosen.runs = [phase.rate for phase in phases]
    return chosen


async def load(
    fleet: Fleet, server: Server, options: argparse.Namespace
) -> tuple[Phase, Phase, Ledger]:
    assert server.process is not None
    ledger = Ledger()
    timing = {"warmup": options.warmup, "seconds": options.seconds}
    batches, singles = [], []
    batch = batch_step(fleet, options.batch, variants=16)
    single = single_step(fleet, variants=4096)
    for _ in range(options.repeat):
        batches.append(
            await drive(
                "batch",
                "msg/s",
                fleet,
                server.process.pid,
                options.batch_connections,
                batch,
                ledger,
                **timing,
            )
        )
        singles.append(
            await drive(
                "single",
                "req/s",
                fleet,
                server.process.pid,
                options.single_connections,
                single,
                ledger,
                **timing,
            )
        )
    return median(batches), median(singles), ledger


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["uv run python -m benchmarks.ingest", *given])
    with contextlib.ExitStack() as stack:
        directory = Path(
            tempfile.mkdtemp(prefix="fleetcloud-bench-")
            if options.keep
            else stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetcloud-bench-"))
        )
        print(f"raw sqlite3 ceiling ({options.repeat} × {options.seconds:g} s) …", flush=True)
        raw = median(
            [
                raw_sqlite(
                    directory / f"raw-{run}.db",
                    batch=options.batch,
                    channels=options.channels,
                    seconds=options.seconds,
                )
                for run in range(options.repeat)
            ]
        )
        database = f"sqlite:///{directory / 'fleetcloud.db'}"
        token, channels = create_fleet(database, options.devices, options.channels)
        server = Server(database, log=directory / "server.log")
        server.start()
        try:
            fleet = Fleet(server.url, server.port, token, channels)
            print("batch and single-message load …", flush=True)
            batch, single, ledger = run_loop(load(fleet, server, options))
        finally:
            server.stop()
        checks = run_loop(verify(database, fleet, ledger))
        if options.keep:
            print(f"kept {directory}")
    phases = [batch, single, raw]
    print()
    print(table(phases))
    print(
        f"\nbatch / raw: {batch.rate / raw.rate:.0%}   "
        f"acknowledged: {ledger.acked:,} messages   "
        f"check: {'ok' if not checks else 'FAILED'}"
    )
    for problem in checks:
        print(f"  - {problem}")
    section = markdown(phases, machine(), command, options, checks)
    if options.no_write:
        print("\n" + section)
    else:
        write_docs("ingest", section)
        print(f"\nwrote {DOCS.relative_to(ROOT)}")
    if options.json:
        figures = {
            "batch_msg_per_s": batch.rate,
            "single_req_per_s": single.rate,
            "single_p50_ms": single.percentile(50),
            "single_p99_ms": single.percentile(99),
            "raw_rows_per_s": raw.rate,
            "server_cpu": [batch.server_cpu, single.server_cpu],
            "other_cpu": [batch.other_cpu, single.other_cpu, raw.other_cpu],
            "acknowledged": ledger.acked,
            "problems": checks,
        }
        print(orjson.dumps(figures).decode())
    return 1 if checks or batch.count == 0 or single.count == 0 else 0


def run_loop(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


if __name__ == "__main__":
    sys.exit(main())
