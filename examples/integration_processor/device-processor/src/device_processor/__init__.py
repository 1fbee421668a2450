from typing import Any

from fleetcloud.sdk.processor import run_app

from .app_config import DeviceProcessorConfig
from .application import DeviceProcessor


def handler(event: dict[str, Any], context):
    """Entry point: the fleetcloud runtime calls this once per event."""
    DeviceProcessorConfig.clear_elements()
    run_app(
        DeviceProcessor(config=DeviceProcessorConfig()),
        event,
        context,
    )
