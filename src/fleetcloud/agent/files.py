"""The agent's data directory: private (0700), with files written atomically (0600).

A file is written to a temporary name, flushed to disk and renamed over the old one, so
a crash or power loss leaves either the old or the new content, never half of one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from fleetcloud.core import jsonish
from fleetcloud.core.errors import ConfigError


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed; refuse one that others may read."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the agent's data directory {path}: {exc}") from exc
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_json(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON, atomically and durably, mode 0600."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, jsonish.dumps(value))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    sync_dir(path.parent)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if there is none (or it is unreadable garbage)."""
    try:
        return jsonish.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sync_dir(path.parent)


def sync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
