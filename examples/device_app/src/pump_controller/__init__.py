"""Pump Controller: a fleetcloud device app that keeps a tank between two levels."""

from fleetcloud.sdk.device import run_app

from .app_config import PumpConfig
from .application import PumpController

__all__ = ["PumpConfig", "PumpController", "main"]


def main() -> int:
    """Run until SIGTERM/SIGINT. The installation's key comes from ``APP_KEY``."""
    return run_app(PumpController(config=PumpConfig(), app_key="pump_controller"))
