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


def quick_run(name: str) -> tuple[dict[str, Any], str]:
    """``python -m benchmarks.NAME --quick --no-write --json``: its JSON summary (the
    last line) and everything it printed."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--no-write", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
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
