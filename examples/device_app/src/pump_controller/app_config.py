"""The Pump Controller's configuration (this app's part of the device's deployment_config)."""

from pathlib import Path

from fleetcloud.sdk import config


class PumpConfig(config.Schema):
    def __init__(self) -> None:
        self.start_level = config.Number(
            "Start Level",
            default=80.0,
            minimum=0,
            maximum=100,
            description="Tank level (%) at which the pump starts in automatic mode",
        )
        self.stop_level = config.Number(
            "Stop Level",
            default=20.0,
            minimum=0,
            maximum=100,
            description="Tank level (%) at which the pump stops in automatic mode",
        )
        self.high_alarm = config.Number(
            "High Alarm",
            default=90.0,
            minimum=0,
            maximum=100,
            description="Tank level (%) that raises an alert (re-armed 5 % below it)",
        )
        self.inflow_rate = config.Number(
            "Inflow Rate",
            default=1.5,
            minimum=0,
            description="Simulated inflow, % of the tank per loop",
        )
        self.pump_rate = config.Number(
            "Pump Rate",
            default=4.0,
            minimum=0,
            description="Simulated outflow while the pump runs, % of the tank per loop",
        )
        self.loop_period = config.Number(
            "Loop Period",
            default=1.0,
            exclusive_minimum=0,
            description="Seconds between two readings",
        )
        self.readings_channel = config.String(
            "Readings Channel",
            default="sensors/tank",
            description="The device channel the readings are published to",
        )


def export() -> None:
    """Write the JSON Schema into doover_config.json (``uv run export-config``)."""
    PumpConfig().export(Path(__file__).parents[2] / "doover_config.json", "pump_controller")
