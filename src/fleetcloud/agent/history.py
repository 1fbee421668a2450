"""What the agent remembers about jobs, on disk.

- ``history.jsonl``: one JSON object per settled job (newest last), bounded to the last
  ``limit`` entries. ``fleetcloud agent history`` reads it.
- ``current.json``: the job being worked on, rewritten as it moves (``received`` →
  ``running`` → ``finished`` with the report to deliver). It survives a crash, so a
  restarted agent can tell the cloud what became of that execution instead of leaving
  it IN_PROGRESS, and can kill step processes the crashed agent left behind.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcloud.agent import files
from fleetcloud.core import jsonish

RECEIVED = "received"
RUNNING = "running"
FINISHED = "finished"


def iso_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class JobHistory:
    """An append-only JSON-lines log of settled jobs, trimmed to its last ``limit``."""

    def __init__(self, path: Path, limit: int = 200) -> None:
        self.path = path
        self.limit = limit

    def append(self, entry: dict[str, Any]) -> None:
        line = jsonish.dumps(entry) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._line_count() > 2 * self.limit:
            self._trim()

    def recent(self, count: int | None = None) -> list[dict[str, Any]]:
        """The last ``count`` entries (all kept ones by default), oldest first."""
        keep = count or self.limit
        entries: deque[dict[str, Any]] = deque(maxlen=keep)
        try:
            with self.path.open("rb") as lines:
                for line in lines:
                    try:
                        entries.append(jsonish.loads(line))
                    except ValueError:
                        continue  # a line torn by a crash mid-write
        except FileNotFoundError:
            return []
        return list(entries)

    def _line_count(self) -> int:
        try:
            with self.path.open("rb") as lines:
                return sum(1 for _ in lines)
        except FileNotFoundError:
            return 0

    def _trim(self) -> None:
        kept = self.recent(self.limit)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"".join(jsonish.dumps(entry) + b"\n" for entry in kept))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)


@dataclass
class CurrentJob:
    """The job in hand, as ``current.json`` records it."""

    job_id: str
    job_name: str
    phase: str = RECEIVED
    received_at: str = ""
    groups: list[dict[str, Any]] | None = None  # step process groups (pgid, boot, ticks)
    report: dict[str, Any] | None = None  # the final status body, once finished

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "job_name": self.job_name,
            "phase": self.phase,
            "received_at": self.received_at,
            "groups": self.groups or [],
            "report": self.report,
        }

    @classmethod
    def from_json(cls, raw: Any) -> CurrentJob | None:
        if not isinstance(raw, dict) or not raw.get("job_id"):
            return None
        return cls(
            job_id=str(raw["job_id"]),
            job_name=str(raw.get("job_name") or ""),
            phase=str(raw.get("phase") or RECEIVED),
            received_at=str(raw.get("received_at") or ""),
            groups=list(raw.get("groups") or []),
            report=raw.get("report"),
        )


class CurrentJobFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> CurrentJob | None:
        return CurrentJob.from_json(files.read_json(self.path))

    def save(self, job: CurrentJob) -> None:
        files.write_json(self.path, job.to_json())

    def clear(self) -> None:
        files.remove(self.path)
