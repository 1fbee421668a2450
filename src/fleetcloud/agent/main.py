"""``fleetcloud agent``: the device agent's run loop.

The agent is an ``async`` resource that owns its tasks (one ``TaskGroup``)::

    Agent.run
    ├── local-api      device apps publish here (127.0.0.1:48484)
    └── main           credentials (env, file, or registration), then
        ├── forwarder  queue → cloud data API
        └── cloud-jobs CloudJobsAdapter.run (when ENABLE_CLOUD_JOBS and ENABLE_JOB_ENGINE)

SIGTERM or SIGINT stops polling and lets a running job finish within the grace period
(``FLEETCLOUD_AGENT_GRACE_SECONDS``); the local API and the forwarder stop after it. A
second signal aborts the job at once (its process groups are killed, the job is reported
FAILED). Only one agent may use a data directory at a time (``agent.lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fleetcloud.agent import files
from fleetcloud.agent.adapter import AdapterOptions, CloudJobsAdapter
from fleetcloud.agent.backoff import Backoff
from fleetcloud.agent.cloud import DataClient, JobsClient
from fleetcloud.agent.config import AgentConfig
from fleetcloud.agent.credentials import Credentials, known_credentials, register
from fleetcloud.agent.engine import JobEngine
from fleetcloud.agent.errors import CloudRefused
from fleetcloud.agent.forwarder import Forwarder
from fleetcloud.agent.history import JobHistory
from fleetcloud.agent.local_api import LocalApi, LocalState, listen
from fleetcloud.agent.queue import MessageQueue
from fleetcloud.core import jsonish
from fleetcloud.core.errors import ConfigError, FleetError
from fleetcloud.logs import JsonFormatter

log = logging.getLogger("fleetcloud.agent.CloudJobsAdapter")
agent_log = logging.getLogger("fleetcloud.agent.Agent")

EXIT_CONFIG = 2
RUNTIME = "agent.json"  # the running agent's pid and local API, for `agent status`
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "color_message",
    "taskName",
}


class SeedFormatter(logging.Formatter):
    """``[CloudJobsAdapter] Received job from cloud {"jobId":"…"}``: the seed's log lines."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"[{record.name.rsplit('.', 1)[-1]}] {record.getMessage()}"
        if record.levelno >= logging.WARNING:
            text = f"[{record.name.rsplit('.', 1)[-1]}] {record.levelname}: {record.getMessage()}"
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if extras:
            text += " " + jsonish.dumps(extras, default=str).decode()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(config: AgentConfig, stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else SeedFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if config.debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.error", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def banner(config: AgentConfig, credentials: Credentials) -> list[str]:
    """The seed's start-up banner (after "☁️  Initializing Cloud Jobs Adapter...")."""
    ms = config.polling_interval_ms
    return [
        "✅ Cloud Jobs Adapter initialized",
        f"   Cloud API: {config.cloud_api_url}",
        f"   Device UUID: {credentials.uuid}",
        f"   Polling interval: {ms}ms ({ms / 1000:g}s)",
        "   Status: Polling for jobs...",
    ]


@contextlib.contextmanager
def instance_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``agent.lock`` (with our pid in it) so a second agent cannot share the data."""
    path = data_dir / "agent.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(
                f"another agent (pid {other}) is running with the data directory {data_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def running_pid(data_dir: Path) -> int | None:
    """The pid of the agent running with ``data_dir``, or None."""
    path = data_dir / "agent.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        return None
    finally:
        os.close(fd)


class Agent:
    def __init__(self, config: AgentConfig, echo: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.echo = echo or (lambda line: print(line, flush=True))
        self.stopping = asyncio.Event()
        self.signals = 0
        self.exit_code = 0
        self.adapter: CloudJobsAdapter | None = None
        self.forwarder: Forwarder | None = None
        self.backoff = Backoff(config.backoff_base, config.backoff_max)
        self.runtime: dict[str, Any] = {}

    # ------------------------------------------------------------ control

    def request_stop(self, reason: str = "stop requested") -> None:
        """First call: stop polling, let a running job finish within the grace period.
        Second call: abort the running job now."""
        self.signals += 1
        if self.signals == 1:
            agent_log.info("%s: stopping", reason)
            self.stopping.set()
            if self.adapter is not None:
                self.adapter.stop()
        elif self.adapter is not None:
            agent_log.warning("%s again: aborting the running job", reason)
            self.adapter.abort_job(f"the agent was stopped ({reason} twice)")

    def fail(self, message: str, code: int = EXIT_CONFIG) -> None:
        log.error(message)
        self.exit_code = code
        self.stopping.set()

    # ------------------------------------------------------------ running

    async def run(self) -> int:
        data_dir = files.private_dir(self.config.data_dir)
        with instance_lock(data_dir):
            queue = MessageQueue(
                data_dir / "outbox.db",
                max_messages=self.config.queue_max_messages,
                max_bytes=self.config.queue_max_bytes,
            )
            async with queue:
                state = LocalState(
                    queue,
                    self.config.cloud_api_url,
                    status=self.status,
                    server_url=self.config.server_url,
                )
                local = (
                    LocalApi(state, listen(self.config.local_api_port))
                    if self.config.local_api
                    else None
                )
                self.runtime = {"pid": os.getpid(), "local_api": local.url if local else None}
                files.write_json(data_dir / RUNTIME, self.runtime)
                try:
                    async with asyncio.TaskGroup() as tasks:
                        if local is not None:
                            tasks.create_task(local.serve(), name="local-api")
                            self.echo(f"📡 Local API for device apps: {local.url}")
                        tasks.create_task(self._main(state, queue, local), name="main")
                finally:
                    files.remove(data_dir / RUNTIME)
        return self.exit_code

    async def _main(self, state: LocalState, queue: MessageQueue, local: LocalApi | None) -> None:
        try:
            if self.config.enable_cloud_jobs:
                self.echo("☁️  Initializing Cloud Jobs Adapter...")
            credentials = await self._credentials()
            if credentials is None:
                return
            state.credentials = credentials
            self.runtime["device_uuid"] = credentials.uuid
            files.write_json(self.config.data_dir / RUNTIME, self.runtime)
            async with asyncio.TaskGroup() as tasks:
                stop_forwarding = asyncio.Event()
                if local is not None:
                    tasks.create_task(
                        self._forward(queue, credentials, stop_forwarding), name="forwarder"
                    )
                await self._jobs(credentials)
                stop_forwarding.set()
        finally:
            if local is not None:
                local.close()

    async def _credentials(self) -> Credentials | None:
        known = known_credentials(self.config)
        if known is not None:
            return known
        if not self.config.provisioning_key:
            self.fail(
                "Device UUID not available: set DEVICE_UUID and DEVICE_API_KEY, or "
                "PROVISIONING_KEY to register this device (see docs/agent.md)"
            )
            return None
        agent_log.info("Registering with the cloud using PROVISIONING_KEY")
        try:
            return await register(self.config, self.backoff, self.stopping)
        except CloudRefused as exc:
            self.fail(f"Device registration refused (HTTP {exc.status}): {exc.message}")
            return None

    async def _jobs(self, credentials: Credentials) -> None:
        """Run the CloudJobsAdapter until stopped (or just wait, if jobs are off)."""
        config = self.config
        if config.enable_cloud_jobs and not config.enable_job_engine:
            log.error("Job Engine not enabled: Cloud Jobs needs ENABLE_JOB_ENGINE=true as well")
        if not config.jobs_enabled or config.cloud_api_url is None:
            await self.stopping.wait()
            return
        client = JobsClient(config.cloud_api_url, credentials.api_key)
        try:
            engine = JobEngine(
                config.handler_dir,
                output_cap=config.output_cap_bytes,
                kill_seconds=config.kill_seconds,
            )
            self.adapter = CloudJobsAdapter(
                client,
                engine,
                credentials.uuid,
                config.data_dir,
                options=self.adapter_options(),
                history=JobHistory(config.data_dir / "history.jsonl", config.history_limit),
            )
            if self.stopping.is_set():
                self.adapter.stop()
            for line in banner(config, credentials):
                self.echo(line)
            await self.adapter.run()
        finally:
            await client.aclose()

    def adapter_options(self) -> AdapterOptions:
        config = self.config
        return AdapterOptions(
            polling_interval=config.polling_interval,
            long_poll=config.long_poll_seconds,
            status_retries=config.status_retries,
            backoff=self.backoff,
            grace_seconds=config.grace_seconds,
            heartbeat_seconds=max(config.polling_interval, 1.0),
        )

    async def _forward(
        self, queue: MessageQueue, credentials: Credentials, stop: asyncio.Event
    ) -> None:
        if self.config.server_url is None:
            raise ConfigError("the data API's server is unknown; set FLEETCLOUD_URL")
        client = DataClient(self.config.server_url, credentials.api_key)
        try:
            self.forwarder = Forwarder(
                queue,
                client,
                credentials.agent_id,
                backoff=Backoff(self.config.backoff_base, self.config.backoff_max, jitter=0.1),
            )
            await self.forwarder.run(stop)
        finally:
            await client.aclose()

    def status(self) -> dict[str, Any]:
        jobs: dict[str, Any] = self.adapter.get_status() if self.adapter else {"polling": False}
        return {
            "pid": os.getpid(),
            "stopping": self.stopping.is_set(),
            "jobs_enabled": self.config.jobs_enabled,
            **jobs,
            "forwarder": {
                "forwarded": self.forwarder.forwarded if self.forwarder else 0,
                "cloud_reachable": self.forwarder.reachable if self.forwarder else None,
            },
        }


async def run_agent(config: AgentConfig) -> int:
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, agent.request_stop, signal.Signals(signum).name)
    try:
        return await agent.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(env: dict[str, str] | None = None) -> int:
    """Read the environment, run the agent until it is stopped; the exit code."""
    try:
        config = AgentConfig.from_env(env)
    except ConfigError as exc:
        print(f"fleetcloud agent: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config)
    try:
        return asyncio.run(run_agent(config))
    except (FleetError, BaseExceptionGroup) as exc:
        errors = fleet_errors(exc)
        if errors is None:
            raise
        for error in errors:
            print(f"fleetcloud agent: {error.message}", file=sys.stderr)
        return EXIT_CONFIG


def fleet_errors(exc: BaseException) -> list[FleetError] | None:
    """The FleetErrors in ``exc`` (through task groups), or None if anything else is."""
    if isinstance(exc, FleetError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[FleetError] = []
        for inner in exc.exceptions:
            errors = fleet_errors(inner)
            if errors is None:
                return None
            found.extend(errors)
        return found
    return None
