"""The ingest benchmark runs end to end (a smoke test: no figure is asserted on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_ingest_benchmark_runs_and_checks_what_it_wrote() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ingest", "--quick", "--no-write", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["problems"] == []
    assert figures["acknowledged"] > 0
    for name in ("batch_msg_per_s", "single_req_per_s", "raw_rows_per_s"):
        assert figures[name] > 0, name
    assert "| batch `POST /api/agents/messages`" in done.stdout  # the Markdown it would write
