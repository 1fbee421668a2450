"""The test broker on its own: how long a record takes from producer to consumer as the
log grows, with nothing of fleetcloud in between.

    uv run python -m benchmarks.tansu                       # 30 s, 8 and 2 partitions
    uv run python -m benchmarks.tansu --seconds 20 --partitions 8 --linger 20

A fresh tansu broker (memory storage, as the other benchmarks and the tests use it); one
aiokafka producer sends ``--rate`` records/s of 400 bytes in ticks of 10 ms (like
``benchmarks.commands``) over 50 keys, one consumer (``fetch_max_wait_ms`` as fleetcloud
sets it) reads them. Every 5 s it prints the producer → consumer delay of the records of
the last 5 s (from the record's timestamp to its arrival) and tansu's CPU so far. It
shows what the commands benchmark's push → device latency carries from the broker: the
delay grows with the batches stored per partition and with the partitions per fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from tests.servers.kafka import tansu_broker

from benchmarks._common import cpu_seconds, percentile, pid_running
from fleetcloud.bus.kafka import CONSUMER_OPTIONS

TICK = 0.01
REPORT_EVERY = 5.0


async def run(bootstrap: str, partitions: int, linger_ms: int, rate: int, seconds: float) -> Any:
    broker = pid_running(bootstrap)
    topic = f"fetch-{partitions}-{linger_ms}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all", enable_idempotence=False
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=CONSUMER_OPTIONS["fetch_max_wait_ms"],
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
    )
    await producer.start()
    await consumer.start()
    arrivals: list[tuple[float, float]] = []  # (arrived, delay in ms)

    async def consume() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                arrivals.extend((now, (now - r.timestamp / 1000) * 1000) for r in records)

    reading = asyncio.ensure_future(consume())
    reports = []
    try:
        await asyncio.sleep(2.0)  # the group joins
        per_tick = max(int(rate * TICK), 1)
        start, cpu_start = time.time(), cpu_seconds(broker) if broker else 0.0
        sends: list[asyncio.Future[Any]] = []
        for tick in range(int(seconds / TICK)):
            await asyncio.sleep(max(start + tick * TICK - time.time(), 0))
            for n in range(per_tick):
                key = str((tick * per_tick + n) % 50).encode()
                sends.append(await producer.send(topic, b"x" * 400, key=key))
            if (tick + 1) % int(REPORT_EVERY / TICK) == 0:
                now = time.time()
                recent = [d for at, d in arrivals if at > now - REPORT_EVERY]
                report = {
                    "second": round(now - start),
                    "p50_ms": percentile(recent, 50),
                    "p99_ms": percentile(recent, 99),
                    "broker_cores": (cpu_seconds(broker) - cpu_start) / (now - start)
                    if broker
                    else float("nan"),
                }
                reports.append(report)
                print(
                    f"  {partitions} partitions, linger {linger_ms} ms, {report['second']:>3} s: "
                    f"delay p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms; "
                    f"tansu {report['broker_cores']:.2f} cores so far",
                    flush=True,
                )
        await asyncio.gather(*sends)
    finally:
        reading.cancel()
        await consumer.stop()
        await producer.stop()
    return reports


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tansu", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=1000, help="records/s")
    parser.add_argument(
        "--partitions", default="8,2", help="partition counts to run, comma-separated"
    )
    parser.add_argument("--linger", type=int, default=1, help="the producer's linger_ms")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--no-write", action="store_true", help="(prints only, always)")
    parser.add_argument("--json", action="store_true", help="end with the figures as JSON")
    options = parser.parse_args(argv)
    options.partitions = [int(p) for p in str(options.partitions).split(",")]
    if options.quick:
        options.seconds, options.rate, options.partitions = REPORT_EVERY, 200, [2]
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    figures = {}
    for partitions in options.partitions:
        with tansu_broker() as url:  # a fresh broker each: an empty log
            bootstrap = url.removeprefix("kafka://")
            figures[str(partitions)] = asyncio.run(
                run(bootstrap, partitions, options.linger, options.rate, options.seconds)
            )
    if options.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
