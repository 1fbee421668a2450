"""Running a device app: ``run_app(app)`` until SIGTERM or SIGINT.

``DeviceRunner`` does the work, one call per phase, so the test harness can step it::

    start()  bind: who the device is (GET /v2/device), this app's part of
             deployment_config validated and bound to app.config, tag_values, the UI's
             last ui_state and ui_cmds  →  setup()
    step()   read tag_values, ui_cmds, deployment_config (the agent's view)
             → config re-bound if this app's part changed (an invalid one is logged and
               the previous kept) → pending ui_cmds to @ui.callback methods
             → main_loop() → the loop's tag changes written as one tag_values message,
               the UI pushed if it changed (even when main_loop raised)
    stop()   the last tags and UI written → close()

Every read and write goes through the device agent's local API, which keeps writes on
disk until the cloud has them and answers reads from its last copy while the cloud is
away. When the agent itself does not answer, a loop goes on with what the app last read,
and the tags and UI it could not write stay pending for the next loop.

``run_app`` waits (logging why) while the agent does not answer or the app's config is
invalid, then calls ``setup()`` once and ``main_loop()`` every ``loop_target_period``
seconds (an exception in ``main_loop`` is logged; the next loop runs). The first SIGTERM
or SIGINT lets the running loop finish, writes the last tags and UI and calls
``close()``; a second one stops the process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from fleetcloud.core.errors import ApiError, NotFound
from fleetcloud.sdk.config import Schema
from fleetcloud.sdk.data import TAG_CHANNEL, UI_CMDS_CHANNEL, UI_STATE_CHANNEL
from fleetcloud.sdk.device.agent import AgentTransport, DeviceTransport
from fleetcloud.sdk.device.application import Application
from fleetcloud.sdk.errors import AgentUnavailable, AppError, ConfigInvalid, DataApiUnavailable
from fleetcloud.sdk.events import as_id
from fleetcloud.sdk.tags import TagBuffer
from fleetcloud.sdk.ui_manager import deliver_commands, remember_coerced

log = logging.getLogger("fleetcloud.sdk.device")

APP_KEY_ENV = "APP_KEY"
DEPLOYMENT_CHANNEL = "deployment_config"
LOOP_READS = (TAG_CHANNEL, UI_CMDS_CHANNEL, DEPLOYMENT_CHANNEL)
START_READS = (*LOOP_READS, UI_STATE_CHANNEL)


async def call(function: Callable[[], Any]) -> None:
    """Call an app's method, awaiting it if it is ``async``."""
    result = function()
    if inspect.isawaitable(result):
        await result


def app_config(aggregate: Mapping[str, Any], app_key: str) -> dict[str, Any]:
    """This app's part of the ``deployment_config`` aggregate (``{"applications":
    {app_key: {…}}}``); ``{}`` if it has none."""
    applications = aggregate.get("applications")
    own = applications.get(app_key) if isinstance(applications, Mapping) else None
    return dict(own) if isinstance(own, Mapping) else {}


class DeviceRunner:
    """Runs one device app against a ``DeviceTransport``; see the module docstring."""

    def __init__(
        self,
        app: Application,
        transport: DeviceTransport,
        *,
        app_key: str | None = None,
        owns_transport: bool = False,
    ) -> None:
        key = app_key or os.environ.get(APP_KEY_ENV, "") or app.app_key
        if not key:
            raise AppError(f"the device app has no app key: pass app_key= or set {APP_KEY_ENV}")
        self.app = app
        self.app_key = key
        self.transport = transport
        self.owns_transport = owns_transport
        self.bound = self.started = self.stopped = False
        self.iterations = 0  # loops run
        self.published = 0  # messages the app published (tags and alerts included)
        self._config_loaded = False
        self._rejected_config: dict[str, Any] | None = None
        self._agent_down = False
        self._refused: str | None = None  # the agent's last refusal of the loop's writes

    @property
    def period(self) -> float:
        return max(0.0, float(self.app.loop_target_period))

    # ------------------------------------------------------------ phases

    async def start(self) -> None:
        """``bind()`` then ``setup()`` (each only once)."""
        await self.bind()
        if not self.started:
            self.started = True
            await call(self.app.setup)

    async def bind(self) -> None:
        """Bind the app to the device. Raises ``AgentUnavailable`` if the agent does not
        answer, ``ConfigInvalid`` if this app's deployment config breaks its schema."""
        if self.bound:
            return
        device = await self.transport.device()
        agent_id = as_id(device.get("agent_id")) or 0
        views = await self._read(START_READS, agent_id, strict=True)
        app = self.app
        app._bind(self.app_key, device, agent_id, self.transport)
        self._load_config(views.get(DEPLOYMENT_CHANNEL, {}), strict=True)
        app._tags = TagBuffer(self.app_key, views.get(TAG_CHANNEL, {}))
        app.ui_manager.load_state(views.get(UI_STATE_CHANNEL, {}), views.get(UI_CMDS_CHANNEL, {}))
        self.bound = True

    async def step(self) -> None:
        """One loop (see the module docstring); re-raises what the app raised, after the
        loop's tags and UI are written."""
        await self.start()
        await self._refresh()
        app = self.app
        try:
            await deliver_commands(app.ui_manager, app, app._tags)
            await call(app.main_loop)
        finally:
            self.iterations += 1
            await self._write()

    async def stop(self) -> None:
        """Write the last tags and UI, call ``close()``, release the transport."""
        if self.stopped:
            return
        self.stopped = True
        try:
            if self.started:
                await self._write()
                await call(self.app.close)
        finally:
            if self.owns_transport:
                await self.transport.aclose()

    # ------------------------------------------------------------ reading

    async def _refresh(self) -> None:
        app = self.app
        views = await self._read(LOOP_READS, app.agent_id, strict=False)
        # Only fresh reads replace what the app holds: after a failed read, its own
        # writes since the last good one must not be undone by an older view.
        if TAG_CHANNEL in views:
            app._tags.rebase(views[TAG_CHANNEL])
        if UI_CMDS_CHANNEL in views:
            app.ui_manager.load_cmds(views[UI_CMDS_CHANNEL])
        if DEPLOYMENT_CHANNEL in views:
            self._load_config(views[DEPLOYMENT_CHANNEL], strict=False)
        if not app.agent_id and views:
            await self._provisioned()

    async def _read(
        self, channels: Iterable[str], agent_id: int, *, strict: bool
    ) -> dict[str, dict[str, Any]]:
        """The channels' aggregates that could be read now (a missing channel is ``{}``)."""
        names = list(channels)
        results = await asyncio.gather(
            *(self.transport.get_aggregate(agent_id, name) for name in names),
            return_exceptions=True,
        )
        views: dict[str, dict[str, Any]] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, NotFound):
                views[name] = {}
            elif isinstance(result, AgentUnavailable):
                if strict:
                    raise result
                self.agent_unavailable(result)
                return {}
            elif isinstance(result, DataApiUnavailable):
                log.debug("no copy of %s yet: %s", name, result)  # the cloud is away (503)
            elif isinstance(result, BaseException):
                raise result
            else:
                data = result.get("data")
                views[name] = data if isinstance(data, dict) else {}
        self._agent_back()
        return views

    async def _provisioned(self) -> None:
        """A device registered since the app started: learn its agent id."""
        with contextlib.suppress(DataApiUnavailable):
            device = await self.transport.device()
            agent_id = as_id(device.get("agent_id"))
            if agent_id:
                self.app.device, self.app.agent_id = device, agent_id
                self.app.ui_manager.bind(self.app_key, agent_id, self.app.api)

    def _load_config(self, aggregate: Mapping[str, Any], *, strict: bool) -> None:
        app = self.app
        values = app_config(aggregate, self.app_key)
        if self._config_loaded and values == app.deployment_config:
            return
        if isinstance(app.config, Schema):
            try:
                app.config.load(values, self.app_key)
            except ConfigInvalid as exc:
                if strict:
                    raise
                if values != self._rejected_config:
                    log.error("%s; the app keeps its previous config", exc.message)
                    self._rejected_config = values
                return
        app.deployment_config = values
        name = values.get("APP_DISPLAY_NAME")
        if isinstance(name, str) and name:
            app.display_name = name
            app.ui_manager.set_display_name(name)
        self._config_loaded = True

    # ------------------------------------------------------------ writing

    async def _write(self) -> None:
        """Write the loop's tag changes and push the UI. If the agent cannot take them
        now (it does not answer, or its queue is full) they stay pending for the next."""
        app = self.app
        remember_coerced(app.ui_manager, app, app._tags)
        try:
            patch = app._tags.flush_patch()
            if patch is not None:
                await app.api.publish_message(app.agent_id, TAG_CHANNEL, patch)
                app._tags.flushed()
            await app.ui_manager.push_async()
        except DataApiUnavailable as exc:
            self.agent_unavailable(exc)
        except ApiError as exc:  # e.g. 507: the agent's queue is full
            if exc.message != self._refused:
                log.warning("tags and UI not written yet (each loop tries again): %s", exc)
            self._refused = exc.message
        else:
            self._refused = None
        finally:
            self.published += len(app.api.published)
            app.api.published.clear()  # a long-running app must not keep them all

    # ------------------------------------------------------------ the agent's health

    def agent_unavailable(self, exc: DataApiUnavailable) -> None:
        """Log that the agent does not answer (once, until it answers again)."""
        if not self._agent_down:
            log.warning("%s; the app goes on with what it last read", exc)
        self._agent_down = True

    def _agent_back(self) -> None:
        if self._agent_down:
            log.info("the device agent answers again")
        self._agent_down = False


# ---------------------------------------------------------------- run_app


def run_app(
    app: Application,
    *,
    app_key: str | None = None,
    agent_url: str | None = None,
    setup_logging: bool = True,
) -> int:
    """Run ``app`` until SIGTERM or SIGINT (see the module docstring); the exit code.

    ``app_key``: this installation's key (else ``APP_KEY``, else the app's own);
    ``agent_url``: the agent's local API (else ``FLEETCLOUD_AGENT_URL``, else
    ``http://127.0.0.1:48484``).
    """
    if setup_logging and not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        for chatty in ("httpx", "httpcore"):  # a line per request to the agent otherwise
            logging.getLogger(chatty).setLevel(logging.WARNING)
    return asyncio.run(run_app_async(app, app_key=app_key, agent_url=agent_url))


async def run_app_async(
    app: Application,
    *,
    app_key: str | None = None,
    agent_url: str | None = None,
    transport: DeviceTransport | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """``run_app`` for async callers: runs until ``stop`` is set (or a stop signal, when
    called in the main thread); 0, or 1 if ``setup()`` or ``close()`` raised."""
    runner = DeviceRunner(
        app,
        transport or AgentTransport(agent_url),
        app_key=app_key,
        owns_transport=transport is None,
    )
    stop = stop or asyncio.Event()
    code = 0
    with stop_signals(stop):
        try:
            if await _bind(runner, stop):
                await runner.start()
                await _loop(runner, stop)
        except Exception:
            log.exception("the device app %r failed to start", runner.app_key)
            code = 1
        try:
            await runner.stop()
        except Exception:
            log.exception("the device app %r failed to close", runner.app_key)
            code = 1
    return code


async def _bind(runner: DeviceRunner, stop: asyncio.Event) -> bool:
    """Bind the app, waiting while the agent does not answer or the config is invalid.
    False if told to stop first."""
    reason = None
    while not stop.is_set():
        try:
            await runner.bind()
        except (DataApiUnavailable, ConfigInvalid) as exc:
            if str(exc) != reason:
                log.warning("waiting to start: %s", exc)
                reason = str(exc)
            await sleep_unless(stop, max(runner.period, 0.1))
        else:
            return True
    return False


async def _loop(runner: DeviceRunner, stop: asyncio.Event) -> None:
    clock = asyncio.get_running_loop()
    while not stop.is_set():
        began = clock.time()
        try:
            await runner.step()
        except DataApiUnavailable as exc:  # the agent is restarting, say: no traceback
            runner.agent_unavailable(exc)
        except Exception:
            log.exception("main_loop of %r raised; the next loop runs as usual", runner.app_key)
        await sleep_unless(stop, runner.period - (clock.time() - began))


async def sleep_unless(stop: asyncio.Event, delay: float) -> None:
    """Sleep ``delay`` seconds, or less if ``stop`` is set meanwhile."""
    if delay <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


@contextlib.contextmanager
def stop_signals(stop: asyncio.Event) -> Iterator[None]:
    """The first SIGTERM/SIGINT sets ``stop``; after it the signals' default actions are
    back, so a second one stops the process at once. (Only in the main thread.)"""
    loop = asyncio.get_running_loop()
    installed: list[int] = []

    def first(signum: int) -> None:
        log.info("%s: stopping after this loop", signal.Signals(signum).name)
        stop.set()
        for number in installed:
            loop.remove_signal_handler(number)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, first, signum)
        except (ValueError, RuntimeError, NotImplementedError):
            continue  # not the main thread: the caller stops us through ``stop``
        installed.append(signum)
    try:
        yield
    finally:
        for number in installed:
            loop.remove_signal_handler(number)
