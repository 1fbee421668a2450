"""Each benchmark runs end to end in its quick form. These are smoke tests: no figure is
asserted on, only that the run finished and that its own correctness checks passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def quick_run(name: str, timeout: float = 110) -> tuple[dict[str, Any], str]:
    """``python -m benchmarks.NAME --quick --no-write --json``: its JSON summary (the
    last line) and everything it printed."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--no-write", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def test_the_ingest_benchmark_runs_and_checks_what_it_wrote() -> None:
    figures, printed = quick_run("ingest")
    assert figures["problems"] == []
    assert figures["acknowledged"] > 0
    for name in ("batch_msg_per_s", "single_req_per_s", "raw_rows_per_s"):
        assert figures[name] > 0, name
    assert "| batch `POST /api/agents/messages`" in printed  # the Markdown it would write


def test_the_apps_benchmark_runs_and_every_message_is_handled_once() -> None:
    figures, printed = quick_run("apps")
    assert figures["counted"] == figures["expected"]
    assert figures["failures"] == 0
    assert figures["throughput"]["complete"]
    assert figures["latency"]["handled"] == figures["latency"]["events"]
    assert "| invocations/s, warm workers (read + set a tag) |" in printed


def test_the_commands_benchmark_runs_and_every_command_and_uplink_arrives() -> None:
    figures, printed = quick_run("commands")
    assert figures["problems"] == []
    for phase in figures["steady"]:
        assert phase["pushed"] > 0
        assert phase["received"] == phase["pushed"]
    assert figures["burst"]["received"] == figures["burst"]["pushed"] > 0
    assert set(figures["statuses"]) == {"DELIVERED"}
    assert {"server", "load generator", "observer", "tansu", "Mosquitto"} <= set(
        figures["steady"][0]["cores"]
    )
    assert figures["reference_s"] > 0
    assert figures["reference_after_s"] > 0
    assert figures["uplink"]["landed"] == figures["uplink"]["count"] > 0
    assert figures["raw"]["complete"]
    assert "| MQTT uplink → channel messages" in printed  # the Markdown it would write


@pytest.mark.timeout(300)
def test_the_jobs_benchmark_runs_and_every_agent_runs_the_job_once() -> None:
    figures, printed = quick_run("jobs", timeout=240)  # 200 simulated agents
    assert figures["problems"] == []
    assert figures["all_succeeded"] is True
    assert figures["agents"] == 200
    assert figures["reconnects"] == 0
    for name in ("execute_to_all_in_progress_s", "execute_to_all_succeeded_s"):
        assert figures[name] > 0, name  # NaN (not every agent got the job) fails too
    assert figures["wake_p50_ms"] is not None
    assert figures["plain_poll_p99_ms"] is not None
    assert "Check after the run: passed" in printed  # the Markdown it would write


def test_the_broker_benchmark_reports_the_delay_of_records_it_produced() -> None:
    figures, printed = quick_run("tansu")
    [report] = figures["2"]
    assert report["p50_ms"] > 0
    assert report["broker_cores"] > 0
    assert "delay p50" in printed
