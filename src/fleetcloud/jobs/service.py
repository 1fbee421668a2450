"""The jobs feature on a running platform: execute, claim with long-poll, status
updates, cancel, and the background loop that enforces timeouts and advances rollouts.

One ``JobsService`` per platform (``jobs_service(platform)``), shared by the API and the
background loop. A long-poll with nothing to start parks a future keyed by its device and
costs nothing until it is woken or its deadline passes (one timer, which does not tick):

- work queued **in this process** (execute, a rollout window, a retry) wakes the device's
  parked polls at once;
- work queued **by another process** sharing the database is found by the background
  loop's sweep, one indexed query per second for the whole process (not per poll), which
  wakes the parked polls of the devices that have new QUEUED executions.

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

from fleetcloud.core.errors import BadRequest, Conflict, StoreError
from fleetcloud.core.ids import lowest_id_at, new_id
from fleetcloud.core.types import Principal
from fleetcloud.jobs import devices, repo
from fleetcloud.jobs.documents import validate_document
from fleetcloud.jobs.model import Execution, Job
from fleetcloud.jobs.repo import Claimed
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
TICK_SECONDS = 1.0
CLAIM_BATCH = 500  # woken polls claimed in one unit of work at most
SWEEP_WINDOW_MS = 120_000  # how far back a sweep looks: covers a slow commit, clock skew


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


class DeviceWaiters:
    """Parked long-polls, by device: a future each, resolved by ``wake``."""

    def __init__(self) -> None:
        self._parked: dict[int, list[asyncio.Future[bool]]] = {}

    @contextlib.contextmanager
    def watch(self, device_id: int) -> Iterator[asyncio.Future[bool]]:
        """A future that ``wake`` resolves with True (registered before the caller looks
        for work, so a wake-up in between is not lost)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        parked = self._parked.setdefault(device_id, [])
        parked.append(future)
        try:
            yield future
        finally:
            parked.remove(future)
            if not parked:
                del self._parked[device_id]

    def wake(self, device_ids: Iterable[int]) -> None:
        for device_id in device_ids:
            for future in self._parked.get(device_id, ()):
                if not future.done():
                    future.set_result(True)

    def wake_all(self) -> None:
        self.wake(list(self._parked))

    def devices(self) -> set[int]:
        return set(self._parked)

    def __len__(self) -> int:
        return sum(len(parked) for parked in self._parked.values())

    def __bool__(self) -> bool:
        return bool(self._parked)


@dataclass(slots=True)
class TickReport:
    timed_out: int = 0
    released: int = 0

    @property
    def idle(self) -> bool:
        return not (self.timed_out or self.released)


class JobsService:
    def __init__(self, store: Store, *, clock: Clock = wall_clock_ms) -> None:
        self.store = store
        self.clock = clock
        self.waiters = DeviceWaiters()
        self.closing = False
        self._swept: dict[int, int] = {}  # QUEUED executions a sweep saw: id → device
        self._gathering: list[tuple[int, asyncio.Future[Claimed | None]]] | None = None

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
    ) -> Claimed | None:
        """Start the device's next execution, waiting up to ``wait`` seconds (at most
        ``MAX_WAIT_SECONDS``) for one to be queued. ``gone`` tells whether the client
        has hung up, so nothing is started for a caller no longer listening."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT_SECONDS)
        woken = False
        while True:
            with self.waiters.watch(device_id) as parked:
                found = await (self._claim_woken(device_id) if woken else self._look(device_id))
                if found is not None or self.closing or loop.time() >= deadline:
                    return found
                timer = loop.call_at(deadline, _resolve, parked, False)
                try:
                    woken = await parked
                finally:
                    timer.cancel()
            if not woken or self.closing or (gone is not None and await gone()):
                return None

    async def _look(self, device_id: int) -> Claimed | None:
        """A poll's first look: most find nothing, which a read connection tells without
        queueing for the writer."""
        if not await self.store.read(repo.has_pending(device_id)):
            return None
        return await self._claim(device_id)

    async def _claim(self, device_id: int) -> Claimed | None:
        try:
            return await self.store.write(repo.claim_next(device_id, self.clock()))
        except StoreError:
            # Another process started one for this device at the same moment: the
            # database's one-running-execution index refused ours.
            if await self.store.read(repo.running(device_id)) is not None:
                return None
            raise

    async def _claim_woken(self, device_id: int) -> Claimed | None:
        """Claim for a woken poll. Polls woken together (a job for many devices) claim
        together: the first to arrive lets the others join for one turn of the event
        loop, then claims for all of them in one unit of work."""
        future: asyncio.Future[Claimed | None] = asyncio.get_running_loop().create_future()
        batch = self._gathering
        leader = batch is None or len(batch) >= CLAIM_BATCH
        if leader:
            batch = self._gathering = []
        assert batch is not None
        batch.append((device_id, future))
        if leader:
            await self._claim_batch(batch)
        return await future

    async def _claim_batch(self, batch: list[tuple[int, asyncio.Future[Claimed | None]]]) -> None:
        """Gather ``batch`` for one turn of the loop, claim, and settle every future in
        it whatever happens (a follower must not wait for a leader that was cancelled)."""
        try:
            try:
                await asyncio.sleep(0)
            finally:
                if self._gathering is batch:
                    self._gathering = None
            try:
                devices = [device_id for device_id, _ in batch]
                found = await self.store.write(repo.claim_many(devices, self.clock()))
            except StoreError:
                # Another process raced one of these devices; claim them one at a time.
                found = [await self._claim(device_id) for device_id, _ in batch]
        except BaseException as exc:
            failure = StoreError(f"could not start the execution: {exc!r}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            raise
        for (_, future), claimed in zip(batch, found, strict=True):
            if not future.done():
                future.set_result(claimed)

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

    async def sweep(self) -> int:
        """Wake the parked polls of devices with QUEUED executions made in the last
        ``SWEEP_WINDOW_MS`` (by any process) that this sweep has not seen before; how
        many devices it woke. One query, whatever the number of parked polls."""
        floor = lowest_id_at(wall_clock_ms() - SWEEP_WINDOW_MS)
        self._swept = {e: d for e, d in self._swept.items() if e > floor}
        if not self.waiters:
            return 0
        found = await self.store.read(repo.queued_since(floor))
        fresh = {device for execution, device in found if execution not in self._swept}
        self._swept.update(found)
        if not fresh:
            return 0
        parked = fresh & self.waiters.devices()
        self.waiters.wake(parked)
        return len(parked)

    async def run(self, interval: float = TICK_SECONDS) -> None:
        while True:
            try:
                await self.run_until_idle()
                await self.sweep()
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
