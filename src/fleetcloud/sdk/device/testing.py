"""Unit-test a device app with no agent and no server: step its loop, look at what it did.

::

    from fleetcloud.sdk.device.testing import DeviceHarness

    with DeviceHarness(PumpController(config=PumpConfig()), app_key="pump",
                       deployment_config={"start_level": 80}) as harness:
        harness.step()                       # setup(), then one main_loop
        harness.ui_command("start", True)    # a user presses Start in the console
        harness.step()
        assert harness.tags["pump_on"] is True
        assert harness.ui_element("level")["currentValue"] == 42.0

The harness runs the real loop (``DeviceRunner``: the same reads, callbacks, tag flush and
UI push as ``run_app``); only the device agent's local API is replaced, by
``FakeLocalAgent`` — the transport seam. The fake keeps the device's channels in memory
with the cloud's semantics (messages merge into aggregates, ``replace=`` swaps a subtree),
serves only this device, and can be taken down (``harness.agent.available = False``) to
see what the app does while the agent does not answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from fleetcloud.core.ids import new_id
from fleetcloud.sdk.data import TAG_CHANNEL, UI_CMDS_CHANNEL
from fleetcloud.sdk.device.agent import check_own, no_agent_listing
from fleetcloud.sdk.device.application import Application
from fleetcloud.sdk.device.loop import DEPLOYMENT_CHANNEL, DeviceRunner
from fleetcloud.sdk.errors import AgentUnavailable
from fleetcloud.sdk.testing import Call, FakeDataAPI, Observed

T = TypeVar("T")


class FakeLocalAgent(FakeDataAPI):
    """An in-memory device agent (``DeviceTransport``) for one device."""

    def __init__(self, *, agent_id: int | None = None, organisation_id: int | None = None):
        self.agent_id = agent_id or new_id()
        organisation = organisation_id or new_id()
        device = {
            "id": str(self.agent_id),
            "organisation_id": str(organisation),
            "kind": "device",
            "name": "test-device",
        }
        super().__init__(organisation, self.agent_id, [device])
        self.available = True  # False: the local API does not answer

    def _up(self, agent_id: int | None = None) -> None:
        if not self.available:
            raise AgentUnavailable("the device agent does not answer (harness.agent.available)")
        if agent_id is not None:
            check_own(self.agent_id, agent_id)

    async def device(self) -> dict[str, Any]:
        self._up()
        return {
            "uuid": str(self.agent_id),
            "agent_id": str(self.agent_id),
            "provisioned": True,
            "queue": {"pending": 0, "pending_bytes": 0},
        }

    async def publish(self, agent_id: int, channel: str, data: Any) -> dict[str, Any]:
        self._up(agent_id)
        return await super().publish(self.agent_id, channel, data)

    async def update_aggregate(
        self, agent_id: int, channel: str, data: Any, replace: str | None = None
    ) -> dict[str, Any]:
        self._up(agent_id)
        return await super().update_aggregate(self.agent_id, channel, data, replace)

    async def get_aggregate(self, agent_id: int, channel: str) -> dict[str, Any]:
        self._up(agent_id)
        return await super().get_aggregate(self.agent_id, channel)

    async def list_agents(self, kind: str | None = None) -> list[dict[str, Any]]:
        raise no_agent_listing()


AppSource = Application | Callable[[], Application]


class DeviceHarness(Observed):
    """Steps one device app against a ``FakeLocalAgent``; see the module docstring.

    Use it as a context manager (or call ``stop()``): the synchronous calls share one event
    loop, closed at the end. In ``async`` tests use ``async with`` and the ``*_async``
    methods instead.
    """

    def __init__(
        self,
        app: AppSource,
        *,
        app_key: str = "test_app",
        deployment_config: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        agent: FakeLocalAgent | None = None,
    ) -> None:
        self.agent = self.api = agent or FakeLocalAgent()
        self.agent_id = self.agent.agent_id
        self.app_key = app_key
        self.user_id = new_id()
        self.app = app if isinstance(app, Application) else app()
        if deployment_config is not None:
            self.set_config(deployment_config)
        if tags:
            self.set_tags(tags)
        self.runner = DeviceRunner(self.app, self.agent, app_key=app_key)
        self.last_calls: list[Call] = []
        self._loop: asyncio.Runner | None = None

    # ------------------------------------------------------------ running

    def start(self) -> None:
        """Bind the app and run ``setup()`` (``step`` does it on its first call)."""
        self._run(self.start_async())

    def step(self, count: int = 1) -> None:
        """Run ``count`` loops; re-raises what ``main_loop`` (or a callback) raised."""
        self._run(self.step_async(count))

    def stop(self) -> None:
        """Write the last tags and UI, run ``close()``, and close the harness's loop."""
        try:
            if not self.runner.stopped:
                self._run(self.stop_async())
        finally:
            if self._loop is not None:
                self._loop.close()
                self._loop = None

    async def start_async(self) -> None:
        await self._track(self.runner.start())

    async def step_async(self, count: int = 1) -> None:
        for _ in range(count):
            await self._track(self.runner.step())

    async def stop_async(self) -> None:
        await self._track(self.runner.stop())

    @property
    def iterations(self) -> int:
        """Loops run so far."""
        return self.runner.iterations

    def __enter__(self) -> DeviceHarness:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> DeviceHarness:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_async()

    async def _track(self, work: Coroutine[Any, Any, T]) -> T:
        start = len(self.agent.calls)
        try:
            return await work
        finally:
            self.last_calls = self.agent.calls[start:]

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            work.close()
            raise RuntimeError(
                "an event loop is running: use `await harness.step_async()` (and "
                "start_async / stop_async) in async tests"
            )
        if self._loop is None:
            self._loop = asyncio.Runner()
        return self._loop.run(work)

    # ------------------------------------------------------------ the world around the app

    def ui_command(self, name: str, value: Any, *, app_key: str | None = None) -> None:
        """A user sets interaction ``name`` in the console (a ``ui_cmds`` message)."""
        key = f"{app_key or self.app_key}_{name}"
        self.agent.put_message(self.agent_id, UI_CMDS_CHANNEL, {key: value}, self.user_id)

    def set_config(self, values: Mapping[str, Any], *, app_key: str | None = None) -> None:
        """Deploy ``values`` as this app's (or ``app_key``'s) part of ``deployment_config``."""
        key = app_key or self.app_key
        body = {"applications": {key: dict(values)}}
        self.agent.patch_aggregate(
            self.agent_id, DEPLOYMENT_CHANNEL, body, replace=f"applications.{key}"
        )

    def set_tags(self, tags: Mapping[str, Any], *, app_key: str | None = None) -> None:
        """Tags written by someone else: another app on the device (``app_key``), or the
        cloud for this one (``None`` clears a tag)."""
        body = {app_key or self.app_key: dict(tags)}
        self.agent.put_message(self.agent_id, TAG_CHANNEL, body, self.user_id)

    @property
    def config(self) -> dict[str, Any]:
        """This app's part of ``deployment_config`` as the harness deployed it."""
        applications = self.aggregate(DEPLOYMENT_CHANNEL).get("applications") or {}
        found = applications.get(self.app_key)
        return dict(found) if isinstance(found, dict) else {}


__all__ = ["DeviceHarness", "FakeLocalAgent"]
