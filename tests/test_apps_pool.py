"""The worker pool on its own: warm reuse, limits, captured output, clean environment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetcloud.apps.model import Status
from fleetcloud.apps.packaging import extract
from fleetcloud.apps.pool import VersionSpec, WorkerPool
from fleetcloud.apps.settings import AppsSettings
from tests.test_apps_kit import make_settings, zip_files

pytestmark = pytest.mark.slow

APP = """
import os
import sys
import time


def handler(event, context):
    d = event["d"]
    print("pid", os.getpid())
    if d.get("sleep"):
        time.sleep(d["sleep"])
    if d.get("print"):
        sys.stdout.write(d["print"])
    if d.get("allocate_mb"):
        block = bytearray(d["allocate_mb"] * 1024 * 1024)
        print("allocated", len(block))
    if d.get("env"):
        print("env", os.environ.get(d["env"]))
"""


def spec(
    tmp_path: Path, files: dict[str, str | bytes], key: int = 1, **options: Any
) -> VersionSpec:
    data = zip_files(files)
    root = extract(tmp_path / "packages", f"{key:064x}", data)
    values: dict[str, Any] = {"timeout_seconds": 10.0, "memory_mb": 128, **options}
    return VersionSpec(key, root, "src.app.handler", **values)


def envelope(**data: Any) -> dict[str, Any]:
    return {"op": "on_manual_invoke", "d": data}


@pytest.fixture
def settings(tmp_path: Path) -> AppsSettings:
    return make_settings(tmp_path, per_version=2, max_workers=3, log_bytes=1024)


@pytest.fixture
async def pool(settings: AppsSettings) -> AsyncIterator[WorkerPool]:
    async with WorkerPool(settings) as running:
        await running.wait_ready()
        yield running


def pid(logs: str) -> int:
    return int(logs.split()[1])


async def test_a_worker_stays_warm_for_its_version(pool: WorkerPool, tmp_path: Path) -> None:
    version = spec(tmp_path, {"src/app/__init__.py": APP})
    first = await pool.invoke(version, envelope(), "http://127.0.0.1:9")
    second = await pool.invoke(version, envelope(), "http://127.0.0.1:9")
    assert (first.status, second.status) == (Status.OK, Status.OK)
    assert (first.cold, second.cold) == (True, False)
    assert pid(first.logs) == pid(second.logs)
    assert await pool.stop_idle(0) == 1
    third = await pool.invoke(version, envelope(), "http://127.0.0.1:9")
    assert third.cold
    assert pid(third.logs) != pid(first.logs)


async def test_concurrency_per_version_is_bounded(pool: WorkerPool, tmp_path: Path) -> None:
    version = spec(tmp_path, {"src/app/__init__.py": APP})
    await pool.invoke(version, envelope(), "http://127.0.0.1:9")  # one warm worker
    started = time.monotonic()
    results = await asyncio.gather(
        *(pool.invoke(version, envelope(sleep=0.4), "http://127.0.0.1:9") for _ in range(4))
    )
    assert all(r.status is Status.OK for r in results)
    assert time.monotonic() - started >= 0.8  # two at a time
    assert len({pid(r.logs) for r in results}) == 2


async def test_output_is_captured_per_invocation_and_capped(
    pool: WorkerPool, tmp_path: Path
) -> None:
    version = spec(tmp_path, {"src/app/__init__.py": APP})
    text = "HEAD" + "x" * 5000 + "TAIL"
    loud = await pool.invoke(version, envelope(print=text), "http://127.0.0.1:9")
    assert loud.logs.startswith("pid ")
    assert loud.logs.endswith("TAIL")
    assert "bytes not kept" in loud.logs
    assert len(loud.logs) < 1100
    quiet = await pool.invoke(version, envelope(), "http://127.0.0.1:9")
    assert quiet.logs == f"pid {pid(loud.logs)}\n"  # nothing left over from the last one


async def test_memory_size_caps_the_address_space(pool: WorkerPool, tmp_path: Path) -> None:
    version = spec(tmp_path, {"src/app/__init__.py": APP}, memory_mb=128)
    fits = await pool.invoke(version, envelope(allocate_mb=32), "http://127.0.0.1:9")
    assert fits.status is Status.OK
    hog = await pool.invoke(version, envelope(allocate_mb=256), "http://127.0.0.1:9")
    assert hog.status is Status.FAILED
    assert hog.error is not None
    assert hog.error.startswith("ran out of memory (MemorySize 128 MB): MemoryError")
    again = await pool.invoke(version, envelope(), "http://127.0.0.1:9")
    assert again.status is Status.OK
    assert pid(again.logs) != pid(hog.logs)  # the worker that ran out was replaced


async def test_an_app_that_cannot_load_fails_with_its_traceback(
    pool: WorkerPool, tmp_path: Path
) -> None:
    broken = spec(tmp_path, {"src/app/__init__.py": "import not_installed\n"}, key=2)
    result = await pool.invoke(broken, envelope(), "http://127.0.0.1:9")
    assert result.status is Status.FAILED
    assert result.error == (
        "cannot load src.app.handler: ModuleNotFoundError: No module named 'not_installed'"
    )
    assert "Traceback" in result.logs
    missing = spec(tmp_path, {"src/app/__init__.py": "x = 1\n"}, key=3)
    result = await pool.invoke(missing, envelope(), "http://127.0.0.1:9")
    assert result.error is not None
    assert "AttributeError" in result.error


async def test_workers_do_not_see_the_servers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETCLOUD_DATABASE_URL", "postgresql://admin:secret@db/fleet")
    async with WorkerPool(make_settings(tmp_path, spare_workers=0)) as pool:
        version = spec(tmp_path, {"src/app/__init__.py": APP})
        result = await pool.invoke(
            version, envelope(env="FLEETCLOUD_DATABASE_URL"), "http://127.0.0.1:9"
        )
    assert "env None" in result.logs


async def test_a_cancelled_invocation_stops_its_worker(pool: WorkerPool, tmp_path: Path) -> None:
    version = spec(tmp_path, {"src/app/__init__.py": APP})
    running = asyncio.create_task(pool.invoke(version, envelope(sleep=30), "http://127.0.0.1:9"))
    await asyncio.sleep(0.5)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert pool.processes == 1  # only the spare is left
