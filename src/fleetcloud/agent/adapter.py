"""The CloudJobsAdapter: asks the cloud for jobs, runs them, reports what happened.

One job at a time::

    poll GET /devices/{uuid}/jobs/next?wait=N  (long poll; interval polling if the
      │                                           server answers at once)
    current.json ← received
    PATCH IN_PROGRESS            (retried 1 s, 2 s, 4 s …)
    current.json ← running       (with the step process groups)
    JobEngine runs the steps     (IN_PROGRESS progress after each step and as a
      │                           heartbeat; a 409 aborts the job: it was canceled)
    current.json ← finished + the report
    PATCH SUCCEEDED | FAILED     (retried; kept on disk until delivered or refused)
    history.jsonl ← the job; current.json removed

A job whose document cannot be run is reported REJECTED. An agent that finds a
``current.json`` when it starts was killed mid-job: it kills what that job left running
and reports the execution FAILED ("agent restarted during the job"), or delivers the
report it had not yet delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fleetcloud.agent.backoff import Backoff, sleep_unless
from fleetcloud.agent.cloud import JobsClient
from fleetcloud.agent.document import JobDocument, parse_document
from fleetcloud.agent.engine import FAILED, Abort, JobEngine, JobResult, StepResult, tail_text
from fleetcloud.agent.errors import (
    CloudRefused,
    CloudUnreachable,
    InvalidJobDocument,
    UpdateRefused,
)
from fleetcloud.agent.history import (
    FINISHED,
    RECEIVED,
    RUNNING,
    CurrentJob,
    CurrentJobFile,
    JobHistory,
    iso_now,
)
from fleetcloud.agent.process import boot_id, kill_leftover, start_ticks

log = logging.getLogger("fleetcloud.agent.CloudJobsAdapter")

T = TypeVar("T")

IN_PROGRESS = "IN_PROGRESS"
REJECTED = "REJECTED"
TIMED_OUT = "TIMED_OUT"
RESTARTED = "agent restarted during the job"
LOST = "the agent never received this job (the answer to jobs/next was lost)"
HISTORY_OUTPUT = 1024  # bytes of stdout/stderr kept in history.jsonl


@dataclass(frozen=True)
class AdapterOptions:
    polling_interval: float = 30.0  # seconds between polls when the server does not hold
    long_poll: float = 30.0  # ?wait= seconds; 0 turns long polling off
    status_retries: int = 3  # retries of a status update after the first attempt
    backoff: Backoff = field(default_factory=Backoff)
    grace_seconds: float = 30.0  # how long a stopping agent lets a running job go on
    heartbeat_seconds: float = 30.0  # IN_PROGRESS heartbeat while a step runs


class Progress:
    """The running job's latest progress, for the heartbeat task."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.last: StepResult | None = None
        self.changed = asyncio.Event()

    async def step_done(self, index: int, result: StepResult) -> None:
        self.done, self.last = index + 1, result
        self.changed.set()

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"steps_done": self.done, "steps": self.total}
        if self.last is not None:
            details["last_step"] = self.last.summary()
        return details


class CloudJobsAdapter:
    def __init__(
        self,
        client: JobsClient,
        engine: JobEngine,
        uuid: str,
        data_dir: Path,
        *,
        options: AdapterOptions | None = None,
        history: JobHistory | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.uuid = uuid
        self.options = options or AdapterOptions()
        self.history = history or JobHistory(data_dir / "history.jsonl")
        self.current_file = CurrentJobFile(data_dir / "current.json")
        self.stopping = asyncio.Event()
        self.polling = False
        self.current: CurrentJob | None = None
        self._abort: Abort | None = None
        self._groups: dict[int, dict[str, Any]] = {}
        self._reconcile = True  # look for executions started but never received
        engine.on_groups = self._groups_changed

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        """Stop polling; a running job gets ``grace_seconds`` to finish."""
        self.stopping.set()

    def abort_job(self, reason: str) -> None:
        """Stop the running job now (its process groups are killed)."""
        if self._abort is not None:
            self._abort.set(reason)

    def get_status(self) -> dict[str, Any]:
        """The seed's ``getStatus()``: polling, the current job, the configuration."""
        return {
            "polling": self.polling,
            "currentJobId": self.current.job_id if self.current else None,
            "config": {
                "cloudApiUrl": self.client.base_url,
                "deviceUuid": self.uuid,
                "pollingIntervalMs": int(self.options.polling_interval * 1000),
                "longPollSeconds": self.options.long_poll,
                "maxRetries": self.options.status_retries,
            },
        }

    def get_job_history(self, limit: int = 10) -> list[dict[str, Any]]:
        return self.history.recent(limit)

    # ------------------------------------------------------------ loops

    async def run(self) -> None:
        """Poll and run jobs until ``stop()``."""
        self.polling = True
        try:
            await self.recover()
            while not self.stopping.is_set():
                if self.current is not None:  # a report still to deliver
                    await self.deliver_pending(self.current)
                    continue
                if self._reconcile:
                    await self.reconcile()
                job = await self.poll()
                if job is not None:
                    await self.execute(job)
        finally:
            self.polling = False

    async def run_until_idle(self) -> int:
        """Recover, then run jobs until the cloud has none pending (no waiting); returns
        how many ran. For tests and one-shot use."""
        await self.recover()
        await self.reconcile()
        count = 0
        while (job := await self.client.next_job(self.uuid)) is not None:
            await self.execute(job)
            count += 1
            if self.current is not None:  # its report is pending: deliver it first
                await self.deliver_pending(self.current)
        return count

    async def poll(self) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        wait = self.options.long_poll
        try:
            stopped, job = await self._unless_stopped(self.client.next_job(self.uuid, wait))
        except CloudUnreachable as exc:
            log.warning("Polling for jobs failed: %s", exc.message)
            self._reconcile = True  # an answer may have been lost on its way
            await sleep_unless(self.stopping, self.options.polling_interval)
            return None
        except CloudRefused as exc:
            log.error("The cloud refused the poll (HTTP %s): %s", exc.status, exc.message)
            await sleep_unless(self.stopping, self.options.polling_interval)
            return None
        if stopped:
            return None
        if job is None:
            log.debug("No pending jobs")
            held = wait > 0 and loop.time() - started >= min(1.0, wait * 0.5)
            if not held:  # the server does not long-poll: fall back to the interval
                await sleep_unless(self.stopping, self.options.polling_interval)
        return job

    async def _unless_stopped(self, call: Awaitable[T]) -> tuple[bool, T | None]:
        """Await ``call`` unless ``stop()`` comes first (then it is cancelled)."""
        task = asyncio.ensure_future(call)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return True, None
        return False, task.result()

    # ------------------------------------------------------------ one job

    async def execute(self, job: dict[str, Any]) -> None:
        job_id, name = str(job["job_id"]), str(job.get("job_name") or "")
        log.info("Received job from cloud", extra={"jobId": job_id, "jobName": name})
        current = CurrentJob(job_id, name, RECEIVED, iso_now())
        self._save(current)
        try:
            document = parse_document(job.get("job_document"))
        except InvalidJobDocument as exc:
            log.warning("Rejecting job: %s", exc.message, extra={"jobId": job_id})
            await self.finish(
                current, {"status": REJECTED, "status_details": {"reason": exc.message}}
            )
            return
        try:
            await self.report(
                job_id, {"status": IN_PROGRESS, "status_details": {"steps": len(document.steps)}}
            )
        except UpdateRefused as exc:
            log.warning("The cloud refused IN_PROGRESS; not running the job: %s", exc.message)
            self._settle(current, None, f"refused before it ran: {exc.message}")
            return
        except (CloudUnreachable, CloudRefused) as exc:
            log.warning("Running the job although IN_PROGRESS was not delivered: %s", exc.message)
        current.phase = RUNNING
        self._save(current)
        log.info("Starting job execution", extra={"jobId": job_id, "steps": len(document.steps)})
        result = await self._run(job_id, document, timeout_of(job))
        log.info(
            "Job execution completed",
            extra={
                "jobId": job_id,
                "exitCode": result.exit_code,
                "duration": f"{result.duration_ms}ms",
            },
        )
        report = result.report()
        if result.timed_out and not result.aborted:
            # The server accepts TIMED_OUT from a device once its own deadline has passed
            # (it has, as the agent's clock started later); the output then reaches the
            # execution even if the server's timer got there first. See fallback().
            report["status"] = TIMED_OUT
        await self.finish(current, report)

    async def _run(self, job_id: str, document: JobDocument, timeout: float | None) -> JobResult:
        abort = Abort()
        progress = Progress(len(document.steps))
        self._abort = abort
        try:
            async with asyncio.TaskGroup() as tasks:
                watchdog = tasks.create_task(self._grace(abort), name="job-grace")
                beat = tasks.create_task(
                    self._heartbeat(job_id, progress, abort), name="job-heartbeat"
                )
                try:
                    return await self.engine.run(
                        document, timeout=timeout, abort=abort, on_step=progress.step_done
                    )
                finally:
                    watchdog.cancel()
                    beat.cancel()
        finally:
            self._abort = None

    async def _grace(self, abort: Abort) -> None:
        await self.stopping.wait()
        grace = self.options.grace_seconds
        log.info("Stopping: the running job has %g s to finish", grace)
        await asyncio.sleep(grace)
        abort.set(
            f"the agent stopped and the job did not finish within the {grace:g} s grace period"
        )

    async def _heartbeat(self, job_id: str, progress: Progress, abort: Abort) -> None:
        """IN_PROGRESS with the progress after each step, and every heartbeat interval;
        a 409 means the execution is no longer ours (canceled, timed out): abort."""
        while True:
            await sleep_unless(progress.changed, self.options.heartbeat_seconds)
            progress.changed.clear()
            body = {"status": IN_PROGRESS, "status_details": progress.details()}
            try:
                await self.client.update_status(self.uuid, job_id, body)
            except UpdateRefused as exc:
                log.warning("The cloud refused a progress update; aborting: %s", exc.message)
                abort.set(f"the cloud refused the job's progress update: {exc.message}")
                return
            except (CloudUnreachable, CloudRefused) as exc:
                log.debug("Progress update not delivered: %s", exc.message)

    async def report(self, job_id: str, body: dict[str, Any]) -> None:
        """``PATCH …/status``, retried after 1 s, 2 s, 4 s … while the cloud is
        unreachable; raises the last error when the retries are spent."""
        attempt = 0
        while True:
            try:
                await self.client.update_status(self.uuid, job_id, body)
            except CloudUnreachable as exc:
                if attempt >= self.options.status_retries:
                    log.error(
                        "Failed to update job status: %s", exc.message, extra={"jobId": job_id}
                    )
                    raise
                delay = self.options.backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "Failed to update job status, retrying in %g s: %s",
                    delay,
                    exc.message,
                    extra={"jobId": job_id, "status": body.get("status")},
                )
                await asyncio.sleep(delay)
                continue
            log.info("Job status updated", extra={"jobId": job_id, "status": body.get("status")})
            return

    async def finish(self, current: CurrentJob, report: dict[str, Any]) -> bool:
        """Keep the final report on disk, then deliver it; False if it is left pending."""
        current.phase, current.report, current.groups = FINISHED, report, []
        self._save(current)
        return await self.deliver(current)

    async def deliver(self, current: CurrentJob) -> bool:
        """One round of delivering ``current``'s report; True once it is settled."""
        if current.report is None:
            return True
        try:
            await self.report(current.job_id, current.report)
        except UpdateRefused as exc:
            log.warning("The cloud refused the job's final status: %s", exc.message)
            self._settle(current, current.report, f"refused: {exc.message}")
            return True
        except CloudRefused as exc:
            other = fallback(current.report, exc.status)
            if other is not None:
                log.warning("The cloud refused the report; sending %s: %s", other[0], exc.message)
                current.report = other[1]
                self._save(current)
                return await self.deliver(current)
            log.error(
                "The cloud refused the job's final status (HTTP %s): %s", exc.status, exc.message
            )
            self._settle(current, current.report, f"refused: {exc.message}")
            return True
        except CloudUnreachable:
            log.error("Failed to update job status; the report is kept and will be retried")
            return False
        self._settle(current, current.report, "delivered")
        return True

    async def deliver_pending(self, current: CurrentJob) -> None:
        """Deliver ``current``'s report, retrying (with backoff) until it is settled or
        the agent stops; an undelivered report stays in current.json for the next start."""
        attempt = 0
        while not await self.deliver(current):
            if await sleep_unless(self.stopping, self.options.backoff.delay(attempt)):
                return
            attempt += 1

    async def recover(self) -> None:
        """Settle the job a previous run of the agent left in current.json."""
        current = self.current_file.load()
        if current is None:
            return
        self.current = current
        if current.phase != FINISHED:
            killed = [
                g["pgid"]
                for g in current.groups or []
                if kill_leftover(g.get("pgid", 0), g.get("boot"), g.get("ticks"))
            ]
            log.warning(
                "Job %s was interrupted by an agent restart; reporting it FAILED",
                current.job_id,
                extra={"jobId": current.job_id, "phase": current.phase, "killedGroups": killed},
            )
            report = {
                "status": FAILED,
                "exit_code": None,
                "stdout": "",
                "stderr": "",
                "status_details": {"reason": RESTARTED, "phase": current.phase},
            }
            if await self.finish(current, report):
                return
        await self.deliver_pending(current)

    async def reconcile(self) -> None:
        """Report FAILED any IN_PROGRESS execution of this device that the agent is not
        running: its jobs/next answer never reached the agent (lost on the way, or the
        agent stopped or died first). Until then the server would start no other job for
        the device, which runs one at a time."""
        try:
            running = await self.client.executions(self.uuid, IN_PROGRESS)
        except (CloudUnreachable, CloudRefused) as exc:
            log.debug("Could not list this device's executions: %s", exc.message)
            return
        self._reconcile = False
        for execution in running:
            job_id = str(execution.get("job_id"))
            if execution.get("status") != IN_PROGRESS or (
                self.current is not None and self.current.job_id == job_id
            ):
                continue
            log.warning(
                "An execution is IN_PROGRESS that this agent never received; reporting it FAILED",
                extra={"jobId": job_id},
            )
            current = CurrentJob(job_id, str(execution.get("job_name") or ""), RECEIVED, iso_now())
            self._save(current)
            report = {"status": FAILED, "exit_code": None, "status_details": {"reason": LOST}}
            if not await self.finish(current, report):
                return

    # ------------------------------------------------------------ files

    def _save(self, current: CurrentJob) -> None:
        self.current = current
        self.current_file.save(current)

    def _settle(self, current: CurrentJob, report: dict[str, Any] | None, delivery: str) -> None:
        self.history.append(history_entry(current, report, delivery))
        self.current_file.clear()
        self.current = None

    def _groups_changed(self, groups: set[int]) -> None:
        boot = boot_id()
        self._groups = {
            pgid: self._groups.get(pgid) or {"pgid": pgid, "boot": boot, "ticks": start_ticks(pgid)}
            for pgid in groups
        }
        if self.current is not None and self.current.phase == RUNNING:
            self.current.groups = list(self._groups.values())
            self.current_file.save(self.current)


def fallback(report: dict[str, Any], status: int) -> tuple[str, dict[str, Any]] | None:
    """What to send instead of ``report`` when the cloud refused it with ``status``: FAILED
    for a TIMED_OUT it does not take from a device, or a minimal report when the output or
    details were what it refused. None: nothing better to send."""
    if report.get("status") == TIMED_OUT and status in (400, 403):
        details = dict(report.get("status_details") or {})
        return "FAILED instead of TIMED_OUT", {
            **report,
            "status": FAILED,
            "status_details": details,
        }
    smaller = minimal_report(report)
    if status in (400, 413, 422) and smaller != report:
        return "a minimal report", smaller
    return None


def minimal_report(report: dict[str, Any]) -> dict[str, Any]:
    """The status, exit code and reason of ``report``: what must reach the cloud even when
    it refuses the rest (output or details too large for it, say)."""
    details = report.get("status_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    minimal: dict[str, Any] = {"status": report.get("status")}
    if "exit_code" in report:
        minimal["exit_code"] = report["exit_code"]
    if isinstance(reason, str):
        minimal["status_details"] = {"reason": reason[:500]}
    return minimal


def timeout_of(job: dict[str, Any]) -> float | None:
    value = job.get("timeout_seconds")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def history_entry(
    current: CurrentJob, report: dict[str, Any] | None, delivery: str
) -> dict[str, Any]:
    report = report or {}
    details = report.get("status_details") or {}
    return {
        "job_id": current.job_id,
        "job_name": current.job_name,
        "status": report.get("status", "NOT_RUN"),
        "exit_code": report.get("exit_code"),
        "reason": details.get("reason") if isinstance(details, dict) else None,
        "received_at": current.received_at,
        "finished_at": iso_now(),
        "duration_ms": details.get("duration_ms") if isinstance(details, dict) else None,
        "steps": details.get("steps") if isinstance(details, dict) else None,
        "stdout": tail_text(str(report.get("stdout") or ""), HISTORY_OUTPUT),
        "stderr": tail_text(str(report.get("stderr") or ""), HISTORY_OUTPUT),
        "report": delivery,
    }
