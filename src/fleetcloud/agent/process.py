"""Run one program in its own process group, keep the tail of its output, stop it.

Every step runs with ``start_new_session=True``: it leads a new session and process
group, so a timeout or an abort can signal the whole tree it started (children,
grandchildren) with one ``killpg``: SIGTERM first, SIGKILL after ``kill_seconds`` for
whatever is still there. Output goes through pipes the agent owns, and only the last
``cap`` bytes of each stream are kept, so a chatty step cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetcloud.agent.errors import StepRefused

DRAIN_SECONDS = 1.0  # how long to wait for output after the program exits


@dataclass
class Outcome:
    """How one program ended."""

    returncode: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    timed_out: bool = False
    aborted: bool = False
    error: str | None = None  # could not start

    @property
    def exit_code(self) -> int | None:
        """Shell convention: 128 + N when a signal N ended the program."""
        if self.returncode is None:
            return None
        return 128 - self.returncode if self.returncode < 0 else self.returncode


@dataclass
class Limits:
    """When to stop a program: a deadline (loop time), an abort event, and the grace
    between SIGTERM and SIGKILL."""

    deadline: float | None = None
    abort: asyncio.Event | None = None
    kill_seconds: float = 5.0
    cap: int = 10 * 1024
    on_start: Callable[[int], None] | None = None  # gets the process group id
    on_exit: Callable[[int], None] | None = None


class Tail(asyncio.Protocol):
    """Collects the last ``cap`` bytes of a pipe and notes when it closes."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buffer = bytearray()
        self.dropped = 0
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        excess = len(self.buffer) - self.cap
        if excess > 0:
            del self.buffer[:excess]
            self.dropped += excess

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def user_options(user: str | None) -> dict[str, Any]:
    """``Popen`` arguments to run as ``user``; refuses clearly when that cannot work."""
    if user is None:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StepRefused(f"cannot run as user {user!r}: there is no such user") from None
    if entry.pw_uid == os.geteuid():
        return {}
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise StepRefused(
            f"cannot run as user {user!r}: the agent runs as {me!r}, and only root may switch users"
        )
    home = entry.pw_dir if os.path.isdir(entry.pw_dir) else "/"
    env = {**os.environ, "HOME": home, "USER": user, "LOGNAME": user}
    return {
        "user": entry.pw_uid,
        "group": entry.pw_gid,
        "extra_groups": os.getgrouplist(user, entry.pw_gid),
        "env": env,
        "cwd": home,
    }


async def run_process(argv: list[str], limits: Limits, user: str | None = None) -> Outcome:
    """Run ``argv`` to its end, its deadline, or an abort; never raises for the program's
    own failures (they are in the ``Outcome``)."""
    options = user_options(user)
    loop = asyncio.get_running_loop()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
            **options,
        )
    except OSError as exc:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        return Outcome(
            returncode=126 if isinstance(exc, PermissionError) else 127, error=reason(argv, exc)
        )
    finally:
        with contextlib.suppress(OSError):
            os.close(out_w)
        with contextlib.suppress(OSError):
            os.close(err_w)
    stdout, stderr = Tail(limits.cap), Tail(limits.cap)
    transports = [
        (await loop.connect_read_pipe(lambda: stdout, os.fdopen(out_r, "rb", buffering=0)))[0],
        (await loop.connect_read_pipe(lambda: stderr, os.fdopen(err_r, "rb", buffering=0)))[0],
    ]
    outcome = Outcome()
    if limits.on_start is not None:
        limits.on_start(process.pid)
    try:
        outcome.timed_out, outcome.aborted = await wait_or_stop(process, limits)
        outcome.returncode = process.returncode
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                await asyncio.gather(stdout.closed, stderr.closed)
    finally:
        if process.returncode is None:  # cancelled from outside: leave nothing behind
            signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(process.wait())
        for transport in transports:
            transport.close()
        if limits.on_exit is not None:
            limits.on_exit(process.pid)
    outcome.stdout, outcome.stdout_dropped = bytes(stdout.buffer), stdout.dropped
    outcome.stderr, outcome.stderr_dropped = bytes(stderr.buffer), stderr.dropped
    return outcome


async def wait_or_stop(process: asyncio.subprocess.Process, limits: Limits) -> tuple[bool, bool]:
    """Wait for ``process``; on the deadline or an abort, stop its group.
    Returns (timed_out, aborted)."""
    waiting = asyncio.ensure_future(process.wait())
    watchers: set[asyncio.Future[Any]] = {waiting}
    aborting = None
    if limits.abort is not None:
        aborting = asyncio.ensure_future(limits.abort.wait())
        watchers.add(aborting)
    timeout = None
    if limits.deadline is not None:
        timeout = max(0.0, limits.deadline - asyncio.get_running_loop().time())
    try:
        await asyncio.wait(watchers, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if aborting is not None and not aborting.done():
            aborting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await aborting
    if waiting.done():
        return False, False
    await stop_group(process, waiting, limits.kill_seconds)
    aborted = aborting is not None and aborting.done() and not aborting.cancelled()
    return not aborted, aborted


async def stop_group(
    process: asyncio.subprocess.Process, waiting: asyncio.Future[int], kill_seconds: float
) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``kill_seconds``."""
    group = process.pid
    signal_group(group, signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + kill_seconds
    # Nothing signals when a process group has emptied, so look.
    while group_alive(group) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    signal_group(group, signal.SIGKILL)
    await waiting


def signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reason(argv: list[str], exc: OSError) -> str:
    program = argv[0]
    if isinstance(exc, FileNotFoundError):
        hint = ""
        if " " in program and "," not in program:
            hint = f" (arguments are comma-separated: {','.join(program.split())!r})"
        return f"command not found: {program!r}{hint}"
    if isinstance(exc, PermissionError):
        return f"permission denied running {program!r}"
    return f"cannot run {program!r}: {exc.strerror or exc}"


# ---------------------------------------------------------------- leftovers of a crash


def boot_id() -> str | None:
    """This boot's id (Linux), to tell a process from before a reboot from one now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), so a reused pid is not mistaken."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def kill_leftover(group: int, boot: str | None, ticks: int | None) -> bool:
    """SIGKILL a process group a previous agent left running, if it is provably the same
    one (same boot, same leader start time). Returns whether it was killed."""
    if boot is None or ticks is None or boot != boot_id() or not group_alive(group):
        return False
    leader = start_ticks(group)
    # A pid is not reused while a process group still carries its number, so a group
    # whose leader is gone is still the one that was recorded.
    if leader is not None and leader != ticks:
        return False
    signal_group(group, signal.SIGKILL)
    return True
