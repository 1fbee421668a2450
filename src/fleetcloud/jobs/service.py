"""The jobs feature on a running platform: execute, claim with long-poll, status
updates, cancel, and the background loop that enforces timeouts and advances rollouts.

One ``JobsService`` per platform (``jobs_service(platform)``), shared by the API and the
background loop, so that a job queued by a request wakes the device's long-poll in the
same process at once. Long-polls also re-check the database every few seconds, which is
how they hear of work queued by another process.

Time comes from ``clock`` (Unix ms), which tests replace to step through rollout
windows and timeouts without sleeping; ``tick()`` runs one round of the background work
and ``run_until_idle()`` repeats it until there is nothing left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fleetcloud.core.errors import BadRequest, Conflict, StoreError
from fleetcloud.core.ids import new_id
from fleetcloud.core.types import Principal
from fleetcloud.jobs import devices, repo
from fleetcloud.jobs.documents import validate_document
from fleetcloud.jobs.model import Execution, Job
from fleetcloud.jobs.requests import ExecuteRequest, StatusUpdate
from fleetcloud.jobs.states import ExecutionStatus, JobStatus
from fleetcloud.jobs.templates import render
from fleetcloud.platform import Platform
from fleetcloud.store.base import Store
from fleetcloud.store.ops import Work

log = logging.getLogger("fleetcloud.jobs")

Clock = Callable[[], int]
MAX_WAIT_SECONDS = 60.0
DEFAULT_TIMEOUT_SECONDS = 3600
RECHECK_SECONDS = 5.0
TICK_SECONDS = 1.0


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class DeviceWaiters:
    """Long-polling requests, by device, and a way to wake them."""

    def __init__(self) -> None:
        self._events: dict[int, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def watch(self, device_id: int) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._events.setdefault(device_id, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._events.get(device_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[device_id]

    def wake(self, device_ids: Iterable[int]) -> None:
        for device_id in device_ids:
            for event in self._events.get(device_id, ()):
                event.set()

    def wake_all(self) -> None:
        self.wake(list(self._events))

    def __len__(self) -> int:
        return sum(len(events) for events in self._events.values())


@dataclass(slots=True)
class TickReport:
    timed_out: int = 0
    released: int = 0

    @property
    def idle(self) -> bool:
        return not (self.timed_out or self.released)


class JobsService:
    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = wall_clock_ms,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.recheck_seconds = recheck_seconds
        self.waiters = DeviceWaiters()
        self.closing = False

    # ------------------------------------------------------------ operators

    async def execute(self, principal: Principal, request: ExecuteRequest) -> Job:
        """Create a job and queue its executions (validated first: nothing is stored for
        a bad document, template, parameter or target)."""
        job = await self._job(principal, request)
        created, queued = await self.store.write(self._create(job, request))
        self.waiters.wake(queued)
        log.info("job %s queued on %d devices", created.id, len(queued))
        return created

    async def _job(self, principal: Principal, request: ExecuteRequest) -> Job:
        organisation_id = principal.organisation_id
        template_id, timeout = None, request.timeout_seconds
        parameters: dict[str, str] = {}
        if request.document is not None:
            document = validate_document(request.document)
        else:
            assert request.template is not None
            template = await self.store.read(repo.find_template(organisation_id, request.template))
            document, parameters = render(template, request.parameters)
            template_id, timeout = template.id, timeout or template.timeout_seconds
        return Job(
            id=new_id(),
            organisation_id=organisation_id,
            name=request.job_name,
            description=request.description,
            status=JobStatus.IN_PROGRESS,
            target_type=request.target_type,
            targets=list(request.targets),
            document=document,
            timeout_seconds=timeout or DEFAULT_TIMEOUT_SECONDS,
            template_id=template_id,
            parameters=parameters,
            maximum_per_minute=request.maximum_per_minute,
            abort_criteria=request.abort_criteria,
            retries=request.retries,
            created_by=principal.agent_id,
        )

    def _create(self, job: Job, request: ExecuteRequest) -> Work[tuple[Job, list[int]]]:
        targets = yield from devices.resolve_targets(
            job.organisation_id, request.target_type, request.targets
        )
        if not targets:
            raise BadRequest(f"target_type {request.target_type} names no devices (none in it)")
        created = yield from repo.create_job(job, targets, self.clock())
        return created

    async def cancel(
        self, principal: Principal, job_id: int, force: bool, reason: str | None
    ) -> Job:
        default = "force-canceled by an operator" if force else "canceled by an operator"
        why = reason or default
        return await self.store.write(
            repo.cancel_job(
                principal.organisation_id, job_id, force, why, self.clock(), principal.agent_id
            )
        )

    async def stop_execution(
        self,
        principal: Principal,
        device_id: int,
        job_id: int,
        target: ExecutionStatus,
        force: bool,
    ) -> Execution:
        outcome = await self.store.write(
            repo.stop_execution(
                principal.organisation_id,
                device_id,
                job_id,
                target,
                force,
                principal.agent_id,
                self.clock(),
            )
        )
        assert outcome.execution is not None
        return outcome.execution

    # ------------------------------------------------------------ devices

    async def next_job(
        self,
        device_id: int,
        wait: float = 0.0,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> tuple[Execution, dict[str, Any]] | None:
        """Start the device's next execution, waiting up to ``wait`` seconds (at most
        ``MAX_WAIT_SECONDS``) for one to be queued. ``gone`` tells whether the client
        has hung up, so nothing is started for a caller no longer listening."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT_SECONDS)
        while True:
            with self.waiters.watch(device_id) as woken:
                found = await self._claim(device_id)
                remaining = deadline - loop.time()
                if found is not None or remaining <= 0 or self.closing:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, self.recheck_seconds))
            if gone is not None and await gone():
                return None

    async def _claim(self, device_id: int) -> tuple[Execution, dict[str, Any]] | None:
        if not await self.store.read(repo.has_pending(device_id)):
            return None
        try:
            return await self.store.write(repo.claim_next(device_id, self.clock()))
        except Conflict:
            return None  # another poll started it first
        except StoreError:
            # Another process started one for this device at the same moment: the
            # database's one-running-execution index refused ours.
            if await self.store.read(repo.running(device_id)) is not None:
                return None
            raise

    async def update_status(
        self, principal: Principal, device_id: int, job_id: int, update: StatusUpdate
    ) -> Execution:
        outcome = await self.store.write(
            repo.update_status(
                principal.organisation_id,
                device_id,
                job_id,
                update,
                principal.agent_id,
                self.clock(),
            )
        )
        self.waiters.wake(outcome.woken)
        assert outcome.execution is not None
        return outcome.execution

    # ------------------------------------------------------------ background work

    async def tick(self) -> TickReport:
        """One round: time out overdue executions, release the next rollout windows."""
        now = self.clock()
        report = TickReport()
        outcome = await self.store.write(repo.time_out(now))
        report.timed_out = outcome.count
        self.waiters.wake(outcome.woken)
        for job_id in await self.store.read(repo.due_rollouts(now)):
            try:
                queued = await self.store.write(repo.release(job_id, now))
            except Conflict:
                continue  # another process released this window
            report.released += len(queued)
            self.waiters.wake(queued)
        return report

    async def run_until_idle(self) -> TickReport:
        total = TickReport()
        while True:
            report = await self.tick()
            if report.idle:
                return total
            total.timed_out += report.timed_out
            total.released += report.released

    async def run(self, interval: float = TICK_SECONDS) -> None:
        while True:
            try:
                await self.run_until_idle()
            except Exception:
                log.exception("jobs background round failed; trying again")
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Answer every long-poll now (the server is stopping)."""
        self.closing = True
        self.waiters.wake_all()


_services: dict[int, JobsService] = {}


def jobs_service(platform: Platform) -> JobsService:
    """The platform's one ``JobsService``."""
    key = id(platform)
    service = _services.get(key)
    if service is None or service.store is not platform.store:
        service = _services[key] = JobsService(platform.store)
        weakref.finalize(platform, _services.pop, key, None)
    return service


@contextlib.asynccontextmanager
async def running(platform: Platform, interval: float = TICK_SECONDS) -> AsyncIterator[JobsService]:
    """The background loop, for ``create_app(services=[running])``."""
    service = jobs_service(platform)
    service.closing = False
    async with asyncio.TaskGroup() as group:
        task = group.create_task(service.run(interval), name="fleetcloud-jobs-background")
        try:
            yield service
        finally:
            service.close()
            task.cancel()
