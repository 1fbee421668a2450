"""Every processor/integration code sample of seed 000, with only the import changed
(``pydoover.cloud.processor`` → ``fleetcloud.sdk.processor``, ``from pydoover import config,
ui`` → ``from fleetcloud.sdk import config, ui``, ``pydoover.ui`` → ``fleetcloud.sdk.ui``),
run through the real ``run_app`` pipeline by the test harness.

The seed leaves some helpers undefined (``self.process_sensor_data``, ``MyUI``,
``MyProtobufMessage`` …); they are defined here, plainly, as an app author would.
"""

# The seed's own style is kept verbatim: a bare except with pass, timezone.utc, a mutable
# class attribute.
# ruff: noqa: E722, S110, UP017, RUF012

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from jsonschema.validators import Draft202012Validator

from fleetcloud.sdk import config, ui
from fleetcloud.sdk.processor import (
    AggregateUpdateEvent,
    Application,
    ConnectionStatus,
    ConnectionType,
    DeploymentEvent,
    ExtendedPermissionsConfig,
    IngestionEndpointConfig,
    IngestionEndpointEvent,
    ManualInvokeEvent,
    ManySubscriptionConfig,
    MessageCreateEvent,
    ScheduleConfig,
    ScheduleEvent,
    run_app,
)
from fleetcloud.sdk.testing import AppHarness
from fleetcloud.sdk.ui import ApplicationVariant

# ---------------------------------------------------------------- configuration


class MyProcessorConfig(config.Schema):
    def __init__(self):
        # Subscribe to channels
        self.subscription = ManySubscriptionConfig()

        # Optional: scheduled triggers
        self.schedule = ScheduleConfig()

        # App-specific config
        self.api_endpoint = config.String("API Endpoint", default="https://api.example.com")


class MyIntegrationConfig(config.Schema):
    def __init__(self):
        # HTTP ingestion endpoint
        self.integration = IngestionEndpointConfig()

        # Access to multiple devices
        self.permissions = ExtendedPermissionsConfig()

        # App-specific config
        self.api_key = config.String("API Key", description="External service API key")


MyAppConfig = MyProcessorConfig


# ---------------------------------------------------------------- Application class and handlers


class MyApp(Application):
    config: MyAppConfig  # Type hint for IDE

    calls: list[str] = []  # the seed's placeholders record that they ran

    async def setup(self):
        """Called once per invocation before event processing."""
        self.calls.append("setup")

    async def close(self):
        """Called once per invocation after event processing."""
        self.calls.append("close")

    async def on_message_create(self, event: MessageCreateEvent):
        """React to channel messages."""
        channel = event.channel_name
        data = event.message.data
        author = event.author_id
        owner = event.owner_id

        # Process the message
        if channel == "sensor_data":
            await self.process_sensor_data(data)
        self.calls.append(f"message from {author} on {owner}")

    async def on_schedule(self, event: ScheduleEvent):
        """Run periodic tasks."""
        schedule_id = event.schedule_id

        # Perform scheduled work
        await self.sync_external_api()
        await self.cleanup_old_data()
        self.calls.append(f"schedule {schedule_id}")

    async def on_ingestion_endpoint(self, event: IngestionEndpointEvent):
        """Receive external data."""
        payload = event.payload  # Parsed by parse_ingestion_event_payload
        ingestion_id = event.ingestion_id
        org_id = event.organisation_id

        # Process and forward to devices
        device_id = payload.get("device_id")
        await self.forward_to_device(device_id, payload)
        self.calls.append(f"ingestion {ingestion_id} for {org_id}")

    def parse_ingestion_event_payload(self, payload: str):
        """Override to customize payload parsing."""
        import base64
        import json

        raw = base64.b64decode(payload)
        return json.loads(raw)

    async def on_deployment(self, event: DeploymentEvent):
        """Initialize on first installation."""
        await self.set_tag("installed_at", datetime.now().isoformat())

    async def on_aggregate_update(self, event: AggregateUpdateEvent):
        """React to configuration changes."""
        pass

    async def on_manual_invoke(self, event: ManualInvokeEvent):
        """Handle manual user action."""
        await self.run_diagnostic()

    # helpers the seed calls but leaves to the author
    async def process_sensor_data(self, data):
        await self.set_tag("last_reading", data)

    async def sync_external_api(self):
        self.calls.append("sync_external_api")

    async def cleanup_old_data(self):
        self.calls.append("cleanup_old_data")

    async def forward_to_device(self, device_id, payload):
        agent_id = await self.get_device_agent(device_id)
        await self.api.publish_message(agent_id, "external_events", payload)

    async def run_diagnostic(self):
        await self.set_tag("diagnostic", {"ok": True, "endpoint": self.config.api_endpoint.value})


def handler(event: dict[str, Any], context):
    """Lambda handler entry point."""
    MyAppConfig.clear_elements()
    run_app(
        MyApp(config=MyAppConfig()),
        event,
        context,
    )


@pytest.fixture
def harness() -> AppHarness:
    MyApp.calls = []
    return AppHarness(handler=handler, app_key="my_processor", devices=["pump-7"])


def test_handler_entry_point_runs_setup_handler_close_in_order(harness: AppHarness) -> None:
    summary = harness.invoke(harness.message_create("sensor_data", {"temperature": 21.5}))
    assert summary["status"] == "ok"
    assert summary["handler"] == "on_message_create"
    assert harness.tags == {"last_reading": {"temperature": 21.5}}
    me = harness.agent_id
    assert MyApp.calls == ["setup", f"message from {me} on {me}", "close"]


def test_on_schedule(harness: AppHarness) -> None:
    harness.invoke(harness.schedule("every-5-minutes"))
    assert MyApp.calls[1:4] == ["sync_external_api", "cleanup_old_data", "schedule every-5-minutes"]


def test_on_ingestion_endpoint_forwards_to_the_named_device(harness: AppHarness) -> None:
    body = {"device_id": "pump-7", "level": 3}
    harness.invoke(harness.ingestion(body))
    pump = harness.device_ids["pump-7"]
    assert harness.published("external_events", agent_id=pump) == [body]
    assert MyApp.calls[1] == f"ingestion ingestion-1 for {harness.organisation_id}"


def test_on_deployment_records_installed_at(harness: AppHarness) -> None:
    harness.invoke(harness.deployment())
    installed = datetime.fromisoformat(harness.tags["installed_at"])
    assert abs(datetime.now() - installed) < timedelta(minutes=1)


def test_on_manual_invoke_and_config_defaults(harness: AppHarness) -> None:
    harness.invoke(harness.manual_invoke({"why": "check"}))
    assert harness.tags["diagnostic"] == {"ok": True, "endpoint": "https://api.example.com"}


def test_on_aggregate_update_runs_and_writes_nothing(harness: AppHarness) -> None:
    summary = harness.invoke(harness.aggregate_update("settings", {"mode": "eco"}))
    assert summary["status"] == "ok"
    assert harness.last_calls == []


# ---------------------------------------------------------------- doover_config.json export


def test_exporting_config_writes_valid_schemas(tmp_path: Path) -> None:
    target = tmp_path / "doover_config.json"
    target.write_text(json.dumps({"my_app": {"name": "my_app", "type": "PRO"}}))

    def export():
        MyAppConfig().export(target, "my_app")

    export()
    MyIntegrationConfig().export(target, "my_integration")
    document = json.loads(target.read_text())
    assert document["my_app"]["type"] == "PRO"  # the file's other keys stay
    for name in ("my_app", "my_integration"):
        schema = document[name]["config_schema"]
        Draft202012Validator.check_schema(schema)
    properties = document["my_app"]["config_schema"]["properties"]
    assert set(properties) == {"dv_proc_subscriptions", "dv_proc_schedules", "api_endpoint"}
    integration = document["my_integration"]["config_schema"]
    assert integration["required"] == ["api_key"]
    ingestion = integration["properties"]["dv_proc_ingestion"]["properties"]
    assert ingestion["throttle"]["maximum"] == 30
    assert ingestion["signing_key_hash_header"]["default"] == "x-hmac-sha256"


# ---------------------------------------------------------------- tags (seed: "State Management")


class DeviceMappingApp(Application):
    async def on_message_create(self, event):
        # Get tag with default
        devices = await self.get_tag("device_mapping", {})

        # Update state
        devices[event.owner_id] = {"last_seen": datetime.now().isoformat()}

        # Save tag
        await self.set_tag("device_mapping", devices)


def test_tags_persist_across_invocations() -> None:
    harness = AppHarness(DeviceMappingApp, app_key="mapper", devices=["other"])
    harness.invoke(harness.message_create("events", {"x": 1}))
    harness.invoke(harness.message_create("events", {"x": 2}, agent_id=harness.device_ids["other"]))
    mapping = harness.tags["device_mapping"]
    assert set(mapping) == {str(harness.agent_id), str(harness.device_ids["other"])}


# ---------------------------------------------------------------- UI management


class StatusUI:
    def __init__(self):
        self.temperature = ui.NumericVariable("temperature", "Temperature", precision=1)
        self.status = ui.TextVariable("status", "Status")

    def fetch(self):
        return (self.temperature, self.status)

    def update_from_event(self, data):
        self.temperature.update(data.get("temperature"))
        self.status.update(data.get("status", "Online"))


MyUI = StatusUI


class UIProcessor(Application):
    async def setup(self):
        self.ui = MyUI()
        self.ui_manager.add_children(*self.ui.fetch())
        self.ui_manager.set_variant(ApplicationVariant.stacked)

    async def on_message_create(self, event):
        # Update UI based on message
        data = event.message.data
        self.ui.temperature.update(data.get("temperature"))
        self.ui.status.update("Online")

        # Push to connected clients
        await self.ui_manager.push_async()


def test_ui_management_pushes_the_application() -> None:
    harness = AppHarness(UIProcessor, app_key="ui_proc")
    harness.invoke(harness.message_create("sensor_data", {"temperature": 21.456}))
    state = harness.ui_state
    assert state is not None
    assert state["variant"] == "stacked"
    assert state["children"]["temperature"]["currentValue"] == 21.5
    assert state["children"]["status"]["currentValue"] == "Online"
    assert len(harness.writes("ui_state", harness.last_calls)) == 1  # pushed once, not twice


# ---------------------------------------------------------------- publishing, connection status


class PublishingIntegration(Application):
    async def on_ingestion_endpoint(self, event):
        payload = event.payload
        device_agent_id = await self.get_device_agent(payload["device_id"])

        # Publish to device's channel
        await self.api.publish_message(device_agent_id, "external_events", payload)


def test_publishing_to_a_device_channel() -> None:
    harness = AppHarness(PublishingIntegration, agent_kind="organisation", devices=["tank-1"])
    harness.invoke(harness.ingestion({"device_id": "tank-1", "litres": 420}))
    tank = harness.device_ids["tank-1"]
    assert harness.messages("external_events", agent_id=tank) == [
        {"device_id": "tank-1", "litres": 420}
    ]


def test_publishing_to_an_unknown_device_fails_clearly() -> None:
    harness = AppHarness(PublishingIntegration, agent_kind="organisation")
    summary = harness.invoke(harness.ingestion({"device_id": "nope"}), check=False)
    assert summary["status"] == "error"
    assert "no device 'nope'" in summary["error"]


class ConnectionProcessor(Application):
    async def on_message_create(self, event):
        # Mark device as online
        await self.ping_connection(
            online_at=datetime.now(timezone.utc),
            connection_status=ConnectionStatus.periodic_unknown,
            connection_type=ConnectionType.periodic,
            offline_at=datetime.now(timezone.utc) + timedelta(hours=1),
        )


def test_connection_status_ping() -> None:
    harness = AppHarness(ConnectionProcessor)
    harness.invoke(harness.message_create("uplink", {"rssi": -70}))
    status = harness.connection["status"]
    assert status["status"] == "PeriodicUnknown"
    assert status["determination"] == "Online"
    assert status["offline_at"] - status["last_online"] == pytest.approx(3_600_000, abs=1000)
    assert harness.connection["config"] == {
        "connection_type": "Periodic",
        "offline_after": pytest.approx(3600, abs=1),
    }
    assert len(harness.pings) == 1


# ---------------------------------------------------------------- custom payload parsing


class MyProtobufMessage:
    """Stands in for a generated protobuf class: field 1, a varint."""

    def ParseFromString(self, raw: bytes) -> None:
        if len(raw) != 2 or raw[0] != 0x08:
            raise ValueError("not a MyProtobufMessage")
        self.level = raw[1]


class ProtobufIntegration(Application):
    def parse_ingestion_event_payload(self, payload: str):
        """Parse protobuf or other formats."""
        import base64

        raw = base64.b64decode(payload)

        # Try protobuf
        try:
            msg = MyProtobufMessage()
            msg.ParseFromString(raw)
            return msg
        except:
            pass

        # Fallback to JSON
        import json

        return json.loads(raw)

    async def on_ingestion_endpoint(self, event):
        payload = event.payload
        level = payload.level if isinstance(payload, MyProtobufMessage) else payload["level"]
        await self.set_tag("level", level)


@pytest.mark.parametrize(("body", "level"), [(b"\x08\x2a", 42), (b'{"level": 7}', 7)])
def test_custom_payload_parsing(body: bytes, level: int) -> None:
    harness = AppHarness(ProtobufIntegration, agent_kind="organisation")
    harness.invoke(harness.ingestion(body))
    assert harness.tags == {"level": level}


# ---------------------------------------------------------------- Integration + Processor pattern


class MyIntegration(Application):
    async def on_ingestion_endpoint(self, event):
        payload = event.payload
        device_id = payload["device_id"]

        # Store device mapping
        devices = await self.get_tag("devices", {})
        devices[device_id] = event.agent_id
        await self.set_tag("devices", devices)

        # Forward to device channel
        await self.api.publish_message(event.agent_id, "on_external_event", payload)


class MyProcessor(Application):
    async def setup(self):
        self.ui = MyUI()
        self.ui_manager.add_children(*self.ui.fetch())

    async def on_message_create(self, event):
        if event.channel_name == "on_external_event":
            data = event.message.data

            # Update UI
            self.ui.update_from_event(data)
            await self.ui_manager.push_async()

            # Update connection status
            await self.ping_connection(online_at=datetime.now(timezone.utc))


def test_integration_then_processor() -> None:
    integration = AppHarness(MyIntegration, app_key="webhook", devices=["sensor-1"])
    body = {"device_id": "sensor-1", "temperature": 19.25, "status": "Reporting"}
    integration.invoke(integration.ingestion(body))
    assert integration.tags == {"devices": {"sensor-1": integration.agent_id}}
    [forwarded] = integration.published("on_external_event")
    assert forwarded == body

    processor = AppHarness(MyProcessor, app_key="display")
    processor.invoke(processor.message_create("on_external_event", forwarded))
    assert processor.ui_element("temperature")["currentValue"] == 19.2  # precision 1
    assert processor.ui_element("status")["currentValue"] == "Reporting"
    assert processor.connection["status"]["determination"] == "Online"


# ---------------------------------------------------------------- best practices


class ErrorHandlingApp(Application):
    async def process(self, event):
        raise RuntimeError("upstream said 503")

    async def on_message_create(self, event):
        try:
            await self.process(event)
        except Exception as e:
            # Log error
            await self.set_tag("last_error", str(e))
            # Don't re-raise unless you want retry
            raise


def test_error_handling_records_the_error_and_reports_failure() -> None:
    harness = AppHarness(ErrorHandlingApp)
    with pytest.raises(RuntimeError, match="503"):
        harness.invoke(harness.message_create("jobs", {"n": 1}))
    summary = harness.summaries[-1]
    assert summary["status"] == "error"
    assert summary["error"] == "RuntimeError: upstream said 503"
    assert harness.tags == {"last_error": "upstream said 503"}  # tags flushed despite the raise


class IdempotentApp(Application):
    """Seed: "Track processed message IDs in tags"."""

    async def on_message_create(self, event):
        processed = await self.get_tag("processed", [])
        if event.message.id in processed:
            return
        total = await self.get_tag("total", 0)
        await self.set_tag("total", total + event.message.data["amount"])
        await self.set_tag("processed", [*processed, event.message.id][-100:])


def test_redelivered_message_is_handled_once() -> None:
    harness = AppHarness(IdempotentApp)
    event = harness.message_create("payments", {"amount": 5})
    harness.invoke(event)
    harness.invoke(event)  # at-least-once delivery: the same message again
    assert harness.tags["total"] == 5


def test_raw_payload_is_kept_base64() -> None:
    harness = AppHarness(ProtobufIntegration, agent_kind="organisation")
    event = harness.ingestion(b"\x08\x01")
    assert base64.b64decode(event["d"]["payload"]) == b"\x08\x01"
