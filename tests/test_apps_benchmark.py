"""The apps benchmark runs end to end (a smoke test: no figure is asserted on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_apps_benchmark_runs_and_every_message_is_handled_once() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.apps", "--quick", "--no-write", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["counted"] == figures["expected"]
    assert figures["failures"] == 0
    assert figures["throughput"]["complete"]
    assert figures["latency"]["handled"] == figures["latency"]["events"]
    assert "| invocations/s, warm workers (read + set a tag) |" in done.stdout
