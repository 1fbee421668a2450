from typing import Any

from fleetcloud.sdk.processor import run_app

from .app_config import WebhookIntegrationConfig
from .application import WebhookIntegration


def handler(event: dict[str, Any], context):
    """Entry point: the fleetcloud runtime calls this once per event."""
    WebhookIntegrationConfig.clear_elements()
    run_app(
        WebhookIntegration(config=WebhookIntegrationConfig()),
        event,
        context,
    )
