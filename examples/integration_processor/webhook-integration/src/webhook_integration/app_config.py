from pathlib import Path

from fleetcloud.sdk import config
from fleetcloud.sdk.processor import ExtendedPermissionsConfig, IngestionEndpointConfig


class WebhookIntegrationConfig(config.Schema):
    def __init__(self):
        # CIDR allow-list, HMAC signing key, throttle, mini-token
        self.integration = IngestionEndpointConfig()
        # Devices this integration may publish to
        self.permissions = ExtendedPermissionsConfig()


def export():
    WebhookIntegrationConfig().export(
        Path(__file__).parents[2] / "doover_config.json",
        "webhook_integration",
    )


if __name__ == "__main__":
    export()
