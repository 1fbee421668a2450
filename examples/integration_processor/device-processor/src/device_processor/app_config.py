from pathlib import Path

from fleetcloud.sdk import config
from fleetcloud.sdk.processor import ManySubscriptionConfig


class DeviceProcessorConfig(config.Schema):
    def __init__(self):
        # Install with {"dv_proc_subscriptions": ["on_external_event"]}
        self.subscription = ManySubscriptionConfig()


def export():
    DeviceProcessorConfig().export(
        Path(__file__).parents[2] / "doover_config.json", "device_processor"
    )


if __name__ == "__main__":
    export()
