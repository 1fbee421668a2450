"""Device apps (``fleetcloud.sdk.device``): the seed's device ``Application`` stepped by the
harness, ``run_app``'s loop, and the transport against the agent's real local API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcloud.agent.credentials import Credentials
from fleetcloud.agent.local_api import LocalState, create_local_app
from fleetcloud.agent.queue import MessageQueue
from fleetcloud.core.errors import ApiError, NotFound
from fleetcloud.core.ids import timestamp_ms
from fleetcloud.sdk import config, ui
from fleetcloud.sdk.device import (
    AgentTransport,
    AgentUnavailable,
    Application,
    ConfigInvalid,
    DataApiUnavailable,
    run_app_async,
)
from fleetcloud.sdk.device.testing import DeviceHarness, FakeLocalAgent
from fleetcloud.sdk.errors import AppError

# ---------------------------------------------------------------- apps used below


class SeedApp(Application):
    """The calls seed 001 shows a device app making."""

    async def setup(self) -> None:
        self.loops = 0

    async def main_loop(self) -> None:
        self.loops += 1
        count = self.get_tag("count", default=0)
        await self.set_tag("count", count + 1)
        await self.set_tag("status", "operational")
        await self.set_tag("sensor_data", {"temperature": 25.5, "humidity": 60.0})
        await self.device_agent.publish_to_channel_async(
            "sensor_readings", json.dumps({"temperature": 25.5, "loop": self.loops})
        )
        await self.publish("sensors/temperature/indoor", {"value": 21.0})
        self.peer_status = self.get_tag("status", app_key="simulator")


class Settings(config.Schema):
    def __init__(self) -> None:
        self.threshold = config.Number("Threshold", default=30.0, maximum=100)
        self.site = config.String("Site")


class ConfiguredApp(Application):
    config: Settings

    async def main_loop(self) -> None:
        await self.set_tag("seen", [self.config.threshold.value, self.config.site.value])


class ButtonApp(Application):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, Any]] = []
        self.reset = ui.Action("reset", "Reset")
        self.setpoint = ui.NumericParameter("setpoint", "Setpoint")
        self.temperature = ui.NumericVariable("temp", "Temperature", precision=1)

    async def setup(self) -> None:
        self.ui_manager.add_children(self.temperature, self.reset, self.setpoint)

    @ui.callback("reset")
    async def on_reset(self, new_value: Any) -> None:
        self.calls.append(("reset", new_value))
        self.reset.coerce(None)

    @ui.callback("setpoint")
    def on_setpoint(self, new_value: Any) -> None:  # a plain function works too
        self.calls.append(("setpoint", new_value))

    async def main_loop(self) -> None:
        self.temperature.update(20.04 + len(self.calls))


def harness_for(app: Application, **kwargs: Any) -> DeviceHarness:
    return DeviceHarness(app, app_key="my_app", **kwargs)


@pytest.fixture
def seed() -> Iterator[DeviceHarness]:
    with harness_for(SeedApp(), tags={"count": 5}) as harness:
        harness.set_tags({"status": "warming up"}, app_key="simulator")
        yield harness


# ---------------------------------------------------------------- the seed's calls


def test_the_seed_calls_publish_through_the_agent(seed: DeviceHarness) -> None:
    seed.step(2)
    assert seed.published("sensor_readings") == [
        {"temperature": 25.5, "loop": 1},
        {"temperature": 25.5, "loop": 2},
    ]
    assert seed.messages("sensors/temperature/indoor") == [{"value": 21.0}, {"value": 21.0}]
    assert seed.tags == {
        "count": 7,
        "status": "operational",
        "sensor_data": {"temperature": 25.5, "humidity": 60.0},
    }
    app = seed.app
    assert isinstance(app, SeedApp)
    assert app.peer_status == "warming up"


def test_a_loops_tag_changes_are_one_message_and_unchanged_tags_none(seed: DeviceHarness) -> None:
    seed.step()
    assert [c.data for c in seed.writes("tag_values", seed.last_calls)] == [
        {
            "my_app": {
                "count": 6,
                "status": "operational",
                "sensor_data": {"temperature": 25.5, "humidity": 60.0},
            }
        }
    ]
    seed.step()
    assert [c.data for c in seed.writes("tag_values", seed.last_calls)] == [
        {"my_app": {"count": 7}}
    ]


def test_get_tag_sees_changes_made_in_the_cloud_at_the_next_loop(seed: DeviceHarness) -> None:
    seed.step()
    seed.set_tags({"count": 100, "status": None})
    seed.step()
    assert seed.tags["count"] == 101
    assert seed.tags["status"] == "operational"


def test_publish_returns_the_message_with_its_id() -> None:
    class Publisher(Application):
        async def main_loop(self) -> None:
            self.sent = await self.publish("events", {"n": 1})

    with harness_for(Publisher()) as harness:
        harness.step()
        app = harness.app
        assert isinstance(app, Publisher)
        assert app.sent.id is not None
        assert app.sent.data == {"n": 1}


def test_plain_functions_work_as_setup_and_main_loop() -> None:
    class Plain(Application):
        def setup(self) -> None:  # type: ignore[override]
            self.ready = True

        def main_loop(self) -> None:  # type: ignore[override]
            self.ran = self.ready

    with harness_for(Plain()) as harness:
        harness.step()
        assert harness.app.ran is True  # type: ignore[attr-defined]


def test_the_app_reaches_only_its_own_device() -> None:
    class Nosy(Application):
        async def main_loop(self) -> None:
            await self.api.publish_message(self.agent_id + 1, "x", 1)

    with harness_for(Nosy()) as harness, pytest.raises(NotFound, match="own device"):
        harness.step()


def test_nothing_reaches_the_agent_before_the_app_starts() -> None:
    app = SeedApp()
    with pytest.raises(AppError, match="once run_app has started"):
        asyncio.run(app.publish("x", 1))


# ---------------------------------------------------------------- config


def test_config_comes_from_the_apps_part_of_deployment_config() -> None:
    with harness_for(ConfiguredApp(config=Settings()), deployment_config={"site": "north"}) as h:
        h.set_config({"site": "other app's"}, app_key="someone_else")
        h.step()
        assert h.tags["seen"] == [30.0, "north"]
        h.set_config({"site": "south", "threshold": 55})
        h.step()
        assert h.tags["seen"] == [55, "south"]
        assert h.app.deployment_config == {"site": "south", "threshold": 55}


def test_an_invalid_config_at_start_is_refused_with_every_problem() -> None:
    harness = harness_for(ConfiguredApp(config=Settings()), deployment_config={"threshold": 500})
    with harness, pytest.raises(ConfigInvalid) as refused:
        harness.step()
    assert "500 is greater than the maximum of 100" in str(refused.value)
    assert "'site' is a required property" in str(refused.value)


def test_an_invalid_config_later_keeps_the_previous_one(caplog: pytest.LogCaptureFixture) -> None:
    with harness_for(ConfiguredApp(config=Settings()), deployment_config={"site": "north"}) as h:
        h.step()
        h.set_config({"site": "north", "threshold": "hot"})
        h.step(2)
        assert h.tags["seen"] == [30.0, "north"]
        assert caplog.text.count("keeps its previous config") == 1
        h.set_config({"site": "east"})
        h.step()
        assert h.tags["seen"] == [30.0, "east"]


# ---------------------------------------------------------------- UI


def test_ui_is_pushed_and_commands_reach_the_callbacks_once() -> None:
    app = ButtonApp()
    with harness_for(app) as harness:
        harness.step()
        assert harness.ui_element("temp")["currentValue"] == 20.0
        assert harness.ui_element("reset")["cmdKey"] == "my_app_reset"
        harness.ui_command("reset", True)
        harness.ui_command("setpoint", 42)
        harness.step(3)
        assert app.calls == [("reset", True), ("setpoint", 42)]
        assert "my_app_reset" not in harness.ui_cmds  # coerce(None) released the button
        assert app.setpoint.current_value == 42
        assert harness.ui_element("temp")["currentValue"] == 22.0
        harness.ui_command("reset", True)  # pressed again
        harness.step()
        assert app.calls[-1] == ("reset", True)
        assert len(app.calls) == 3


def test_an_unchanged_ui_is_not_pushed_again() -> None:
    with harness_for(ButtonApp()) as harness:
        harness.step()
        harness.step()
        assert harness.writes("ui_state", harness.last_calls) == []


def test_a_restarted_app_does_not_handle_old_commands_again() -> None:
    first = ButtonApp()
    with harness_for(first) as harness:
        harness.ui_command("setpoint", 42)
        harness.step()
    again = ButtonApp()
    with harness_for(again, agent=harness.agent) as restarted:
        restarted.step()
        assert again.calls == []
        assert again.setpoint.current_value == 42


def test_alerts_go_to_significant_event() -> None:
    class Alarm(Application):
        async def setup(self) -> None:
            self.alerts = ui.AlertStream()
            self.ui_manager.add_children(self.alerts)

        async def main_loop(self) -> None:
            await self.alerts.send_alert("too hot", level=99)

    with harness_for(Alarm()) as harness:
        harness.step()
        assert harness.alerts == [{"message": "too hot", "app_key": "my_app", "level": 99}]


# ---------------------------------------------------------------- failures


def test_a_raising_loop_still_writes_its_tags_and_the_next_loop_runs() -> None:
    class Flaky(Application):
        async def main_loop(self) -> None:
            runs = self.get_tag("runs", 0) + 1
            await self.set_tag("runs", runs)
            if runs == 1:
                raise ValueError("sensor not ready")

    with harness_for(Flaky()) as harness:
        with pytest.raises(ValueError, match="sensor not ready"):
            harness.step()
        assert harness.tags["runs"] == 1
        harness.step()
        assert harness.tags["runs"] == 2


def test_while_the_agent_is_down_the_loop_goes_on_and_tags_wait(seed: DeviceHarness) -> None:
    seed.step()
    seed.agent.available = False
    with pytest.raises(AgentUnavailable, match="does not answer"):
        seed.step()  # the seed app's publish fails: the app sees it
    assert seed.tags["count"] == 6, "nothing written while the agent is down"
    seed.agent.available = True
    seed.step()
    assert seed.tags["count"] == 8, "the pending change and the new one"


def test_an_app_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_KEY", raising=False)
    with pytest.raises(AppError, match="no app key"):
        DeviceHarness(SeedApp(), app_key="")


async def test_in_async_tests_the_harness_is_awaited() -> None:
    async with harness_for(SeedApp()) as harness:
        with pytest.raises(RuntimeError, match="step_async"):
            harness.step()
        await harness.step_async(2)
        assert harness.iterations == 2
        assert harness.tags["count"] == 2


# ---------------------------------------------------------------- run_app


class Counting(Application):
    """Stops itself after three loops; records what ran."""

    def __init__(self, stop: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stop = stop
        self.events: list[str] = []

    async def setup(self) -> None:
        self.events.append("setup")

    async def main_loop(self) -> None:
        self.events.append("loop")
        await self.set_tag("loops", self.events.count("loop"))
        if self.events.count("loop") == 2:
            raise RuntimeError("a bad loop")  # logged; the next one runs
        if self.events.count("loop") == 3:
            self.stop.set()

    async def close(self) -> None:
        self.events.append("close")


async def test_run_app_loops_until_stopped_then_closes() -> None:
    agent = FakeLocalAgent()
    stop = asyncio.Event()
    app = Counting(stop, app_key="counter", loop_target_period=0)
    assert await run_app_async(app, transport=agent, stop=stop) == 0
    assert app.events == ["setup", "loop", "loop", "loop", "close"]
    assert agent.aggregate(agent.agent_id, "tag_values") == {"counter": {"loops": 3}}


class LateAgent(FakeLocalAgent):
    """An agent that is not up yet; ``asked`` is set when the app first tries it."""

    def __init__(self) -> None:
        super().__init__()
        self.available = False
        self.asked = asyncio.Event()

    async def device(self) -> dict[str, Any]:
        self.asked.set()
        return await super().device()


async def test_run_app_waits_for_the_agent(caplog: pytest.LogCaptureFixture) -> None:
    agent = LateAgent()
    stop = asyncio.Event()
    app = Counting(stop, app_key="counter", loop_target_period=0.01)
    running = asyncio.ensure_future(run_app_async(app, transport=agent, stop=stop))
    await asyncio.wait_for(agent.asked.wait(), 10)
    assert app.events == []
    agent.available = True
    assert await asyncio.wait_for(running, 10) == 0
    assert app.events[0] == "setup"
    assert "waiting to start: the device agent does not answer" in caplog.text


async def test_run_app_reports_a_failing_setup() -> None:
    class Broken(Application):
        async def setup(self) -> None:
            raise OSError("no serial port")

    code = await run_app_async(Broken(app_key="b"), transport=FakeLocalAgent())
    assert code == 1


# ---------------------------------------------------------------- the real local API


@pytest.fixture
async def local_agent(tmp_path: Path) -> AsyncIterator[tuple[AgentTransport, MessageQueue]]:
    """``AgentTransport`` against the agent's real local API (in-process; no cloud)."""
    async with MessageQueue(tmp_path / "outbox.db", max_messages=4) as queue:
        state = LocalState(queue, "http://127.0.0.1:9/api/v1")  # a cloud that never answers
        state.credentials = Credentials("77", "key", "77", "environment")
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_local_app(state)))
        try:
            yield AgentTransport("http://agent", client=client), queue
        finally:
            await client.aclose()
            await state.aclose()


async def test_the_agent_transport_speaks_the_local_api(
    local_agent: tuple[AgentTransport, MessageQueue],
) -> None:
    transport, queue = local_agent
    assert (await transport.device())["provisioned"] is True
    assert transport.agent_id == 77
    message = await transport.publish(77, "sensors/a b", {"t": 1})
    assert message["channel"] == {"agent_id": "77", "name": "sensors/a b"}
    assert timestamp_ms(int(message["id"])) == message["timestamp"]
    await transport.update_aggregate(0, "ui_state", {"state": {"children": {"x": {"v": 1}}}})
    await transport.update_aggregate(
        0, "ui_state", {"state": {"children": {"x": {}}}}, "state.children.x"
    )
    found = await transport.get_aggregate(77, "ui_state")
    assert found["data"] == {"state": {"children": {"x": {}}}}
    assert [(m.channel, m.kind) for m in await queue.peek(10, 1 << 20)] == [
        ("sensors/a b", "message"),
        ("ui_state", "patch"),
        ("ui_state", "patch"),
    ]
    with pytest.raises(DataApiUnavailable, match="keeps no copy"):
        await transport.get_aggregate(77, "tag_values")
    with pytest.raises(NotFound, match="own device"):
        await transport.publish(78, "x", 1)
    await transport.publish(77, "x", 1)
    with pytest.raises(ApiError, match="queue of messages for the cloud is full") as full:
        await transport.publish(77, "x", 2)
    assert full.value.status == 507


async def test_no_agent_is_a_clear_error() -> None:
    transport = AgentTransport("http://127.0.0.1:9")
    try:
        with pytest.raises(AgentUnavailable, match="is `fleetcloud agent` running"):
            await transport.device()
    finally:
        await transport.aclose()
