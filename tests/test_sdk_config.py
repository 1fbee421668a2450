"""config.Schema: elements, JSON Schema export into doover_config.json, loading values."""

from __future__ import annotations

import enum
import json
from pathlib import Path

import pytest
from jsonschema.validators import Draft202012Validator

from fleetcloud.core.errors import ConfigError
from fleetcloud.sdk import config
from fleetcloud.sdk.errors import ConfigInvalid, ConfigNotSet
from fleetcloud.sdk.processor import (
    Application,
    ExtendedPermissionsConfig,
    IngestionEndpointConfig,
    ManySubscriptionConfig,
    ScheduleConfig,
)
from fleetcloud.sdk.testing import AppHarness


class Mode(enum.Enum):
    eco = "eco"
    boost = "boost"


class PumpConfig(config.Schema):
    def __init__(self):
        self.subscription = ManySubscriptionConfig()
        self.schedule = ScheduleConfig()
        self.pump_pin = config.Integer("Pump Pin", minimum=0, maximum=7, description="Output")
        self.on_time = config.Number("On Time", default=5.5, exclusive_minimum=0)
        self.label = config.String("Label", default="pump", max_length=20)
        self.enabled = config.Boolean("Enabled", default=True)
        self.mode = config.Enum("Mode", choices=Mode, default=Mode.eco)
        self.size = config.Enum("Size", choices=["s", "m", "l"], default="m")
        self.tanks = config.Array("Tanks", element=config.String("Tank"), default=["t1"])
        self.peer = config.Application("Peer App", default=None)
        self.location = config.Object(
            "Location", config.Number("Latitude"), config.Number("Longitude")
        )


class DeclaredConfig(config.Schema):
    """Elements declared on the class work too (and are copied per instance)."""

    threshold = config.Number("Threshold", default=30.0)


def valid_values() -> dict[str, object]:
    return {"pump_pin": 3, "location": {"latitude": -33.9, "longitude": 151.2}}


def test_export_writes_draft_2020_12_schema_and_keeps_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "doover_config.json"
    path.write_text(json.dumps({"pump": {"name": "pump", "type": "PRO"}, "other": {"x": 1}}))
    PumpConfig().export(path, "pump")
    document = json.loads(path.read_text())
    assert document["other"] == {"x": 1}
    assert document["pump"]["type"] == "PRO"
    schema = document["pump"]["config_schema"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)  # valid against the 2020-12 meta-schema
    properties = schema["properties"]
    assert list(properties)[:3] == ["dv_proc_subscriptions", "dv_proc_schedules", "pump_pin"]
    assert properties["pump_pin"] == {
        "title": "Pump Pin",
        "description": "Output",
        "type": "integer",
        "minimum": 0,
        "maximum": 7,
        "x-name": "pump_pin",
        "x-hidden": False,
        "x-required": True,
        "x-position": 2,
    }
    assert properties["mode"]["enum"] == ["eco", "boost", None]
    assert properties["mode"]["default"] == "eco"
    assert properties["tanks"]["items"]["type"] == "string"
    assert properties["peer_app"]["format"] == "app-key"
    assert schema["required"] == ["pump_pin", "location"]
    assert Draft202012Validator(schema).is_valid(valid_values())


def test_export_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "doover_config.json"
    DeclaredConfig().export(path, "declared")
    schema = json.loads(path.read_text())["declared"]["config_schema"]
    assert schema["properties"]["threshold"]["default"] == 30.0


def test_export_refuses_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "doover_config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        PumpConfig().export(path, "pump")
    assert path.read_text() == "{not json"


def test_values_are_bound_with_defaults() -> None:
    schema = PumpConfig()
    schema.load({**valid_values(), "mode": "boost", "tanks": ["a", "b"], "APP_ID": "7"})
    assert schema.pump_pin.value == 3
    assert schema.on_time.value == 5.5
    assert schema.mode.value is Mode.boost
    assert [tank.value for tank in schema.tanks.elements] == ["a", "b"]
    assert schema.tanks.value == ["a", "b"]
    assert schema.location.value == {"latitude": -33.9, "longitude": 151.2}
    assert schema.peer.value is None
    assert schema.subscription.value == []
    assert schema.schedule.value == "disabled"
    assert schema.raw["APP_ID"] == "7"  # keys the schema does not declare are kept


def test_validation_errors_name_every_problem() -> None:
    schema = PumpConfig()
    with pytest.raises(ConfigInvalid) as caught:
        schema.load(
            {
                "pump_pin": 9,
                "label": 5,
                "size": "xl",
                "dv_proc_schedules": "every tuesday",
                "location": {"latitude": "north"},
            },
            app_key="pump",
        )
    message = str(caught.value)
    assert message.startswith("the deployment config for 'pump' does not match")
    assert "pump_pin: 9 is greater than the maximum of 7" in message
    assert "label: 5 is not of type 'string', 'null'" in message
    assert "size: 'xl' is not one of" in message
    assert "dv_proc_schedules: 'every tuesday' does not match" in message
    assert "location.latitude: 'north' is not of type 'number'" in message
    assert "location: 'longitude' is a required property" in message
    assert len(caught.value.problems) == 6


@pytest.mark.parametrize(
    "schedule", ["rate(5 minutes)", "rate(1 hour)", "cron(0 9 * * ? *)", "*/5 * * * *", "disabled"]
)
def test_schedule_forms_are_accepted(schedule: str) -> None:
    schema = PumpConfig()
    schema.load({**valid_values(), "dv_proc_schedules": schedule})
    assert schema.schedule.value == schedule


def test_missing_required_value_is_clear_before_loading() -> None:
    with pytest.raises(ConfigNotSet, match="'pump_pin' \\(Pump Pin\\) is not set"):
        _ = PumpConfig().pump_pin.value


def test_instances_do_not_share_values_or_duplicate_elements() -> None:
    PumpConfig.clear_elements()
    first, second = PumpConfig(), PumpConfig()
    first.load(valid_values())
    assert len(second.elements) == len(first.elements) == 11
    a, b = DeclaredConfig(), DeclaredConfig()
    a.load({"threshold": 1.0})
    assert (a.threshold.value, b.threshold.value) == (1.0, 30.0)


def test_two_elements_with_one_key_are_refused() -> None:
    class Clash(config.Schema):
        def __init__(self):
            self.a = config.String("Name")
            self.b = config.String("name")

    with pytest.raises(ValueError, match="two config elements are named 'name'"):
        Clash()


def test_trigger_elements_have_the_runtimes_keys() -> None:
    class IntegrationConfig(config.Schema):
        def __init__(self):
            self.integration = IngestionEndpointConfig()
            self.permissions = ExtendedPermissionsConfig()

    schema = IntegrationConfig()
    schema.load({"dv_proc_ingestion": {"throttle": 20, "cidr_ranges": ["10.0.0.0/8"]}})
    assert schema.integration.value == {
        "cidr_ranges": ["10.0.0.0/8"],
        "signing_key": "",
        "signing_key_hash_header": "x-hmac-sha256",
        "throttle": 20,
        "mini_token": False,
        "never_replace_token": False,
    }
    assert schema.permissions.all_devices.value is False
    with pytest.raises(ConfigInvalid, match="throttle: 31 is greater than the maximum of 30"):
        schema.load({"dv_proc_ingestion": {"throttle": 31}})


class NeedsKey(Application):
    async def on_schedule(self, event):
        await self.set_tag("key", self.config.api_key.value)


class KeyConfig(config.Schema):
    def __init__(self):
        self.api_key = config.String("API Key")


def test_an_invocation_with_an_invalid_deployment_config_fails_before_setup() -> None:
    harness = AppHarness(lambda: NeedsKey(config=KeyConfig()), app_key="needs_key")
    summary = harness.invoke(harness.schedule(), check=False)
    assert summary["status"] == "error"
    assert summary["error"] == (
        "ConfigInvalid: the deployment config for 'needs_key' does not match the app's "
        "config schema: (root): 'api_key' is a required property"
    )
    assert harness.api.calls == []
    harness.deployment_config = {"applications": {"needs_key": {"api_key": "k-1"}}}
    harness.invoke(harness.schedule())  # the whole deployment_config channel works too
    assert harness.tags == {"key": "k-1"}
