"""The JobEngine: runs a job document's steps as subprocesses and judges the result.

Rules (docs/agent.md has the user's version):

- steps run in order and the first failure stops the rest, unless that step says
  ``ignoreStepFailure``; with ``"parallel": true`` they all run at once;
- ``finalStep`` runs after the steps whatever happened to them (success, failure,
  timeout), but not when the job is aborted (canceled by the cloud, or the agent stopping
  past its grace period);
- a step fails when it cannot start, exits non-zero, is killed, or writes more stderr
  lines than ``allowStdErr`` allows;
- the job's ``timeout`` is a deadline for its steps: on it the running step's whole
  process group is killed, the other steps are skipped, and the job fails with "timed out
  after N s" (``JobResult.timed_out``; how that is reported is the adapter's business).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcloud.agent.document import Action, JobDocument
from fleetcloud.agent.errors import StepRefused
from fleetcloud.agent.process import Limits, Outcome, run_process
from fleetcloud.core import jsonish

SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
SKIPPED = "SKIPPED"
MAX_DETAILS_BYTES = 4096  # the server takes status_details up to 8 KB
MAX_REASON = 500

StepCallback = Callable[[int, "StepResult"], Awaitable[None]]


class Abort:
    """Tells a running job to stop now, and why."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


@dataclass
class StepResult:
    name: str
    status: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    reason: str | None = None
    duration_ms: int = 0
    ignored: bool = False
    timed_out: bool = False

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.exit_code is not None:
            summary["exit_code"] = self.exit_code
        if self.reason:
            summary["reason"] = self.reason[:MAX_REASON]
        if self.ignored:
            summary["ignored"] = True
        return summary


@dataclass
class JobResult:
    status: str
    steps: list[StepResult] = field(default_factory=list)
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    reason: str | None = None
    duration_ms: int = 0
    timed_out: bool = False
    aborted: bool = False

    def report(self) -> dict[str, Any]:
        """The body of the final ``PATCH …/status``."""
        details: dict[str, Any] = {
            "steps": [step.summary() for step in self.steps],
            "duration_ms": self.duration_ms,
        }
        if self.reason:
            details["reason"] = self.reason[:MAX_REASON]
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "status_details": bounded(details),
        }


def bounded(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` within ``MAX_DETAILS_BYTES``: a long step list is cut to the steps that
    did not succeed, then dropped (its length is kept as ``steps_total``)."""
    if len(jsonish.dumps(details)) <= MAX_DETAILS_BYTES:
        return details
    steps = details.get("steps") or []
    compact = {**details, "steps_total": len(steps)}
    compact["steps"] = [step for step in steps if step.get("status") != SUCCEEDED][:8]
    if len(jsonish.dumps(compact)) <= MAX_DETAILS_BYTES:
        return compact
    del compact["steps"]
    return compact


def tail_text(text: str, cap: int) -> str:
    """The last ``cap`` bytes of ``text`` (UTF-8), cut on a character boundary."""
    data = text.encode()
    if len(data) <= cap:
        return text
    return data[-cap:].decode(errors="ignore")


def handler_path(handler_dir: Path, name: str) -> Path:
    """The handler ``name`` in ``handler_dir``, if both are safe to run (AWS's rules:
    the directory is private to the agent's user, mode 0700)."""
    if not name or "/" in name or name in (".", ".."):
        raise StepRefused(f"handler {name!r} must be a file name in the handler directory")
    try:
        info = handler_dir.lstat()
    except FileNotFoundError:
        raise StepRefused(f"the handler directory {handler_dir} does not exist") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StepRefused(f"the handler directory {handler_dir} is not a directory")
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o700 or info.st_uid != os.geteuid():
        raise StepRefused(
            f"the handler directory {handler_dir} must be owned by the agent's user with "
            f"mode 0700 (it has {mode:04o}); run: chmod 700 {handler_dir}"
        )
    path = handler_dir / name
    try:
        file = path.lstat()
    except FileNotFoundError:
        raise StepRefused(f"handler {name!r} is not in {handler_dir}") from None
    file_mode = stat.S_IMODE(file.st_mode)
    if not stat.S_ISREG(file.st_mode):
        raise StepRefused(f"handler {path} must be a regular file (not a link or directory)")
    if not file_mode & stat.S_IXUSR:
        raise StepRefused(f"handler {path} is not executable; run: chmod 700 {path}")
    if file_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StepRefused(f"handler {path} is writable by others ({file_mode:04o}); chmod 700")
    return path


def judge(action: Action, outcome: Outcome) -> tuple[str, str | None]:
    """SUCCEEDED or FAILED, and why."""
    if outcome.error is not None:
        return FAILED, outcome.error
    if outcome.timed_out:
        return FAILED, "timed out; its process group was killed"
    if outcome.aborted:
        return FAILED, "aborted; its process group was killed"
    code = outcome.exit_code
    if code:
        return FAILED, f"exited with code {code}"
    lines = len(outcome.stderr.splitlines())
    if action.allow_stderr is not None and lines > action.allow_stderr:
        return FAILED, f"wrote {lines} lines to stderr (allowStdErr is {action.allow_stderr})"
    return SUCCEEDED, None


class JobEngine:
    """Runs one job at a time; reports the process groups it has running."""

    def __init__(
        self,
        handler_dir: Path,
        *,
        output_cap: int = 10 * 1024,
        kill_seconds: float = 5.0,
        final_step_seconds: float = 60.0,
        on_groups: Callable[[set[int]], None] | None = None,
    ) -> None:
        self.handler_dir = handler_dir
        self.output_cap = output_cap
        self.kill_seconds = kill_seconds
        self.final_step_seconds = final_step_seconds
        self.on_groups = on_groups
        self.groups: set[int] = set()
        self._one_at_a_time = asyncio.Lock()

    async def run(
        self,
        document: JobDocument,
        *,
        timeout: float | None = None,
        abort: Abort | None = None,
        on_step: StepCallback | None = None,
    ) -> JobResult:
        async with self._one_at_a_time:
            loop = asyncio.get_running_loop()
            started = loop.time()
            abort = abort or Abort()
            deadline = None if timeout is None else started + timeout
            if document.parallel:
                steps = await self._parallel(document.steps, deadline, abort)
            else:
                steps = await self._in_order(document.steps, deadline, abort, on_step)
            if document.final_step is not None:
                steps.append(await self._final(document.final_step, deadline, abort))
            return self._result(document, steps, timeout, abort, loop.time() - started)

    async def _in_order(
        self,
        actions: tuple[Action, ...],
        deadline: float | None,
        abort: Abort,
        on_step: StepCallback | None,
    ) -> list[StepResult]:
        results: list[StepResult] = []
        stop_reason: str | None = None
        for index, action in enumerate(actions):
            if stop_reason is None and abort.is_set():
                stop_reason = "the job was aborted"
            if stop_reason is not None:
                results.append(StepResult(action.name, SKIPPED, reason=stop_reason))
                continue
            result = await self.run_step(action, deadline, abort)
            results.append(result)
            if result.timed_out:
                stop_reason = "the job timed out"
            elif result.failed and not result.ignored:
                stop_reason = f"step {action.name!r} failed"
            if on_step is not None:
                await on_step(index, result)
        return results

    async def _parallel(
        self, actions: tuple[Action, ...], deadline: float | None, abort: Abort
    ) -> list[StepResult]:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self.run_step(action, deadline, abort), name=action.name)
                for action in actions
            ]
        return [task.result() for task in tasks]

    async def _final(self, action: Action, deadline: float | None, abort: Abort) -> StepResult:
        if abort.is_set():
            return StepResult(action.name, SKIPPED, reason="the job was aborted")
        if deadline is not None:
            now = asyncio.get_running_loop().time()
            deadline = max(deadline, now + self.final_step_seconds)
        return await self.run_step(action, deadline, abort)

    async def run_step(self, action: Action, deadline: float | None, abort: Abort) -> StepResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        limits = Limits(
            deadline=deadline,
            abort=abort.event,
            kill_seconds=self.kill_seconds,
            cap=self.output_cap,
            on_start=self._started,
            on_exit=self._exited,
        )
        try:
            argv = list(action.argv)
            if action.handler is not None:
                argv.insert(0, str(handler_path(self.handler_dir, action.handler)))
            outcome = await run_process(argv, limits, user=action.run_as_user)
        except StepRefused as exc:
            outcome = Outcome(error=exc.message)
        status, reason = judge(action, outcome)
        return StepResult(
            name=action.name,
            status=status,
            exit_code=outcome.exit_code,
            stdout=outcome.stdout.decode(errors="replace"),
            stderr=outcome.stderr.decode(errors="replace"),
            reason=reason,
            duration_ms=int((loop.time() - started) * 1000),
            ignored=status == FAILED and action.ignore_failure and not outcome.aborted,
            timed_out=outcome.timed_out,
        )

    def _result(
        self,
        document: JobDocument,
        steps: list[StepResult],
        timeout: float | None,
        abort: Abort,
        elapsed: float,
    ) -> JobResult:
        failure = next((s for s in steps if s.failed and not s.ignored), None)
        timed_out = any(s.timed_out for s in steps)
        reason = None
        if abort.is_set():
            reason = abort.reason
        elif timed_out:
            reason = f"timed out after {timeout:g} s"
        elif failure is not None:
            reason = f"step {failure.name!r} failed: {failure.reason}"
        ran = [s for s in steps if s.status != SKIPPED]
        exit_code = failure.exit_code if failure else (ran[-1].exit_code if ran else None)
        stdout = "".join(s.stdout for s in steps) if document.include_stdout else ""
        return JobResult(
            status=FAILED if failure or timed_out or abort.is_set() else SUCCEEDED,
            steps=steps,
            exit_code=exit_code,
            stdout=tail_text(stdout, self.output_cap),
            stderr=tail_text("".join(s.stderr for s in steps), self.output_cap),
            reason=reason,
            duration_ms=int(elapsed * 1000),
            timed_out=timed_out,
            aborted=abort.is_set(),
        )

    def _started(self, group: int) -> None:
        self.groups.add(group)
        if self.on_groups is not None:
            self.on_groups(set(self.groups))

    def _exited(self, group: int) -> None:
        self.groups.discard(group)
        if self.on_groups is not None:
            self.on_groups(set(self.groups))
