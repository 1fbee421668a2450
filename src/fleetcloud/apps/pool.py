"""Worker processes for app code: warm, reused per app version, never the server itself.

``async with WorkerPool(settings) as pool: result = await pool.invoke(spec, envelope, url)``

- **Warm and reused.** A worker that ran version V stays loaded with it and takes V's
  next event. ``per_version`` bounds how many of V's events run at once; ``max_workers``
  bounds the processes running app code in all (an idle worker of another version is
  stopped to make room). Workers idle for ``idle_seconds`` are stopped.
- **Cold starts.** ``spare_workers`` processes are started ahead with the SDK already
  imported (the slow part of starting Python here); a new version takes a spare and only
  imports its own code. Another spare is started in the background.
- **Limits.** ``Timeout``: past it the worker's process group is killed (``TIMED_OUT``).
  ``MemorySize``: ``RLIMIT_AS`` in the worker, at least ``memory_floor_mb`` (an
  allocation past it raises ``MemoryError``; the worker is then replaced, ``FAILED``).
- **Isolation.** The protocol has a socket of its own; standard output and error go to a
  file that becomes the invocation's logs (capped at ``log_bytes``, head and tail kept).
  A worker that exits, crashes or breaks the protocol fails only the invocation it was
  running, and is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcloud.apps.model import Status
from fleetcloud.apps.protocol import HEADER, MAX_FRAME, ProtocolError, decode, encode
from fleetcloud.apps.settings import AppsSettings

log = logging.getLogger("fleetcloud.apps.pool")

START_TIMEOUT = 60.0  # a worker that takes longer to start is given up
LOAD_TIMEOUT = 60.0
REAP_SECONDS = 5.0


@dataclass(frozen=True)
class VersionSpec:
    """What a worker needs to run one app version."""

    key: int  # the version's id
    root: Path  # the extracted package
    handler: str
    timeout_seconds: float
    memory_mb: int


@dataclass
class Result:
    """How one invocation went, as the worker (or its death) told it."""

    status: Status
    error: str | None
    logs: str
    started_us: int
    duration_ms: float
    summary: dict[str, Any] | None = None
    cold: bool = False


def _dead(process: asyncio.subprocess.Process) -> str:
    code = process.returncode
    if code is None:
        return "the worker stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"the worker was killed by {signal.Signals(-code).name}"
        return f"the worker was killed by signal {-code}"
    return f"the worker exited with code {code}"


class Worker:
    """One child process, its protocol streams and its log file."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        logs: int,
    ) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer
        self.logs = logs  # a file descriptor: the worker's stdout and stderr
        self.key: int | None = None
        self.last_used = time.monotonic()

    @classmethod
    async def spawn(cls, env: dict[str, str], cwd: Path) -> Worker:
        ours, theirs = socket.socketpair()
        logs = log_file(cwd)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fleetcloud.apps.worker",
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logs,
                stderr=logs,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        except BaseException:
            ours.close()
            os.close(logs)
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_FRAME)
        return cls(process, reader, writer, logs)

    async def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request and wait for its answer (``TimeoutError``, ``ProtocolError``)."""
        self.writer.write(encode(message))
        async with asyncio.timeout(timeout):
            try:
                await self.writer.drain()
                (size,) = HEADER.unpack(await self.reader.readexactly(HEADER.size))
                return decode(await self.reader.readexactly(size))
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise ProtocolError("the worker closed the channel") from exc

    def clear_logs(self) -> None:
        if os.fstat(self.logs).st_size:
            os.ftruncate(self.logs, 0)

    def read_logs(self, cap: int) -> str:
        """What the worker wrote since the last read (head and tail past ``cap``); the
        file is emptied for the next invocation."""
        fd = self.logs
        size = os.fstat(fd).st_size
        if not size:
            return ""
        if size <= cap:
            raw = os.pread(fd, size, 0)
        else:
            head = cap // 4
            tail = cap - head
            omitted = size - cap
            raw = (
                os.pread(fd, head, 0)
                + f"\n… [{omitted} bytes not kept] …\n".encode()
                + os.pread(fd, tail, size - tail)
            )
        os.ftruncate(fd, 0)
        return clean_text(raw.decode("utf-8", errors="replace"))

    async def kill(self) -> None:
        """Kill the worker's process group and wait for it (its logs stay readable)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the worker (asking first, unless ``kill``) and close its log file."""
        if self.process.returncode is None:
            if kill:
                await self.kill()
            else:
                self.writer.close()  # end of requests: the worker returns
                try:
                    await asyncio.wait_for(self.process.wait(), 5)
                except TimeoutError:
                    await self.kill()
        self.writer.close()
        os.close(self.logs)


def log_file(directory: Path) -> int:
    """An anonymous file in memory (a temporary one where there is no ``memfd``), opened
    for appending, so that the worker's writes always land at its end."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("fleetcloud-app-logs")
    else:  # not Linux
        fd, path = tempfile.mkstemp(dir=directory)
        os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd


def clean_text(text: str) -> str:
    """Text PostgreSQL can store (no NUL characters)."""
    return text.replace("\x00", "\ufffd")


@dataclass
class _Stats:
    spawned: int = 0
    cold_starts: int = 0
    killed: int = 0
    invocations: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class WorkerPool:
    def __init__(self, settings: AppsSettings | None = None) -> None:
        self.settings = settings or AppsSettings()
        self.stats = _Stats()
        self._idle: dict[int, list[Worker]] = {}
        self._spares: list[Worker] = []
        self._busy: set[Worker] = set()
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._capacity = asyncio.Semaphore(self.settings.max_workers)
        self._starting = 0
        self._wanted = asyncio.Event()
        self._spare_added = asyncio.Event()
        self._closed = False
        self._tasks: asyncio.TaskGroup | None = None
        self._workdir = self.settings.cache_dir / "workers"
        self._stack = contextlib.AsyncExitStack()

    # ------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[WorkerPool]:
        self._workdir.mkdir(parents=True, exist_ok=True)
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            keeper = tasks.create_task(self._keep_spares(), name="apps-pool-spares")
            reaper = tasks.create_task(self._reap(), name="apps-pool-reaper")
            try:
                yield self
            finally:
                keeper.cancel()
                reaper.cancel()
                await self.close()

    async def __aenter__(self) -> WorkerPool:
        return await self._stack.enter_async_context(self.running())

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stack.__aexit__(*exc_info)

    async def close(self) -> None:
        self._closed = True
        workers = [*self._spares, *self._busy, *(w for ws in self._idle.values() for w in ws)]
        self._spares, self._idle = [], {}
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)

    @property
    def processes(self) -> int:
        idle = sum(len(ws) for ws in self._idle.values())
        return idle + len(self._busy) + len(self._spares)

    def env(self) -> dict[str, str]:
        """The workers' environment: nothing of the server's own (no database URL)."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self._workdir),
            "TMPDIR": os.environ.get("TMPDIR", tempfile.gettempdir()),
            "PYTHONDONTWRITEBYTECODE": "1",
            "MALLOC_ARENA_MAX": "1",  # RLIMIT_AS counts each reserved malloc arena
        }
        if "PYTHONPATH" in os.environ:  # how this process found fleetcloud, if not installed
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return env

    # ------------------------------------------------------------ spares and idle workers

    async def _keep_spares(self) -> None:
        while not self._closed:
            missing = self.settings.spare_workers - len(self._spares) - self._starting
            if missing <= 0:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            self._starting += 1
            try:
                worker = await self._spawn()
            except Exception:
                log.exception("could not start a spare app worker")
                await asyncio.sleep(1.0)
                continue
            finally:
                self._starting -= 1
            self.stats.spawned += 1
            self._spares.append(worker)
            self._spare_added.set()

    async def _spawn(self) -> Worker:
        """A new worker process; if the caller is cancelled meanwhile, it is stopped."""
        starting = asyncio.ensure_future(
            asyncio.wait_for(Worker.spawn(self.env(), self._workdir), START_TIMEOUT)
        )
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await (await starting).stop(kill=True)
            raise

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_SECONDS)
            await self.stop_idle(self.settings.idle_seconds)

    async def stop_idle(self, older_than: float = 0.0) -> int:
        """Stop loaded workers unused for ``older_than`` seconds; returns how many."""
        now = time.monotonic()
        stale: list[Worker] = []
        for key, workers in list(self._idle.items()):
            keep = [w for w in workers if now - w.last_used < older_than]
            stale.extend(w for w in workers if now - w.last_used >= older_than)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        await asyncio.gather(*(w.stop() for w in stale), return_exceptions=True)
        return len(stale)

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the spare workers have started (for benchmarks and tests)."""
        async with asyncio.timeout(timeout):
            while len(self._spares) < self.settings.spare_workers:
                self._spare_added.clear()
                await self._spare_added.wait()

    # ------------------------------------------------------------ invoking

    async def invoke(self, spec: VersionSpec, envelope: dict[str, Any], api_url: str) -> Result:
        """Run ``handler(envelope, context)`` of ``spec`` in a worker and report how it went."""
        slot = self._slots.setdefault(spec.key, asyncio.Semaphore(self.settings.per_version))
        async with slot, self._capacity:
            worker, cold = await self._take(spec)
            if isinstance(worker, Result):
                return worker
            self._busy.add(worker)
            try:
                result = await self._run(worker, spec, envelope, api_url)
            except asyncio.CancelledError:
                await worker.stop(kill=True)  # the dispatcher is stopping: so does this run
                raise
            finally:
                self._busy.discard(worker)
            result.cold = cold
            self.stats.invocations += 1
            self.stats.by_status[result.status] = self.stats.by_status.get(result.status, 0) + 1
            await self._put_back(worker, spec, result)
            return result

    async def _take(self, spec: VersionSpec) -> tuple[Worker | Result, bool]:
        """A worker loaded with ``spec``: an idle one, else a spare or a new process."""
        idle = self._idle.get(spec.key)
        while idle:
            worker = idle.pop()
            if worker.process.returncode is None:
                return worker, False
            await worker.stop()  # it died while idle (killed from outside)
        await self._make_room()
        if self._spares:
            worker = self._spares.pop()
            self._wanted.set()
        else:
            try:
                worker = await self._spawn()
            except (OSError, TimeoutError) as exc:
                now = time.time()
                return Result(
                    Status.FAILED, f"could not start a worker: {exc}", "", int(now * 1e6), 0.0
                ), True
            self.stats.spawned += 1
        self.stats.cold_starts += 1
        try:
            failure = await self._load(worker, spec)
        except asyncio.CancelledError:
            await worker.stop(kill=True)
            raise
        return (failure if failure is not None else worker), True

    async def _make_room(self) -> None:
        """Stop the least recently used idle worker if loaded workers are at the cap."""
        loaded = sum(len(ws) for ws in self._idle.values()) + len(self._busy)
        if loaded < self.settings.max_workers:
            return
        candidates = [(w.last_used, key) for key, ws in self._idle.items() for w in ws]
        if not candidates:
            return
        _, key = min(candidates)
        workers = self._idle[key]
        victim = min(workers, key=lambda w: w.last_used)
        workers.remove(victim)
        if not workers:
            del self._idle[key]
        await victim.stop()

    async def _load(self, worker: Worker, spec: VersionSpec) -> Result | None:
        request = {
            "op": "load",
            "root": str(spec.root),
            "handler": spec.handler,
            "memory_mb": max(spec.memory_mb, self.settings.memory_floor_mb),
        }
        worker.clear_logs()
        started = time.time()
        try:
            answer = await worker.call(request, LOAD_TIMEOUT)
        except (TimeoutError, ProtocolError, OSError):
            await worker.kill()
            failure = self._failed(
                worker, "could not load the app: " + _dead(worker.process), started
            )
            await worker.stop()
            return failure
        if not answer.get("ok"):
            await worker.kill()
            failure = self._failed(worker, str(answer.get("error")), started)
            await worker.stop()
            return failure
        worker.key = spec.key
        return None

    def _failed(self, worker: Worker, error: str, started: float) -> Result:
        return Result(
            Status.FAILED,
            error,
            worker.read_logs(self.settings.log_bytes),
            int(started * 1_000_000),
            round((time.time() - started) * 1000, 3),
        )

    async def _run(
        self, worker: Worker, spec: VersionSpec, envelope: dict[str, Any], api_url: str
    ) -> Result:
        started = time.time()
        request = {"op": "invoke", "envelope": envelope, "api_url": api_url}
        try:
            answer = await worker.call(request, spec.timeout_seconds)
        except TimeoutError:
            await worker.kill()
            self.stats.killed += 1
            error = f"timed out after {spec.timeout_seconds:g} s: the worker was stopped"
            return self._ended(worker, Status.TIMED_OUT, error, started)
        except (ProtocolError, OSError):
            await worker.kill()
            return self._ended(worker, Status.FAILED, _dead(worker.process), started)
        return self._answered(worker, spec, answer)

    def _ended(self, worker: Worker, status: Status, error: str, started: float) -> Result:
        result = self._failed(worker, error, started)
        result.status = status
        return result

    def _answered(self, worker: Worker, spec: VersionSpec, answer: dict[str, Any]) -> Result:
        summary = answer.get("summary")
        summary = summary if isinstance(summary, dict) else None
        status, error = classify(answer, summary)
        if answer.get("memory_error"):
            status = Status.FAILED
            error = f"ran out of memory (MemorySize {spec.memory_mb} MB): {error}"
        return Result(
            status,
            None if error is None else clean_text(error),
            worker.read_logs(self.settings.log_bytes),
            int(float(answer.get("started", time.time())) * 1_000_000),
            float(answer.get("duration_ms", 0.0)),
            summary,
        )

    async def _put_back(self, worker: Worker, spec: VersionSpec, result: Result) -> None:
        healthy = worker.process.returncode is None and result.status is not Status.FAILED
        if not healthy or self._closed:
            await worker.stop(kill=True)
            return
        worker.last_used = time.monotonic()
        self._idle.setdefault(spec.key, []).append(worker)


def classify(answer: dict[str, Any], summary: dict[str, Any] | None) -> tuple[Status, str | None]:
    """The invocation's status from the worker's answer and the SDK's summary."""
    if not answer.get("ok"):
        return Status.FAILED, str(answer.get("error") or "the worker refused the invocation")
    if answer.get("error"):
        return Status.ERROR, str(answer["error"])
    if summary is None:
        return Status.OK, None  # a handler that does not use run_app, and returned
    if summary.get("status") == "skipped":
        return Status.SKIPPED, None
    if summary.get("status") == "error":
        return Status.ERROR, str(summary.get("error"))
    return Status.OK, None
