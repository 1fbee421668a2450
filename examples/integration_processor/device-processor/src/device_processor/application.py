"""The processor side of the seed's "Integration + Processor" pattern.

Installed on each device and subscribed to ``on_external_event``: when the integration
forwards a reading there, the processor shows it on the device's UI and marks the device
online (it reports every few minutes, so it counts as offline an hour after the last one).
"""

from datetime import UTC, datetime, timedelta

from fleetcloud.sdk.processor import (
    Application,
    ConnectionStatus,
    ConnectionType,
    MessageCreateEvent,
)
from fleetcloud.sdk.ui import ApplicationVariant

from .app_config import DeviceProcessorConfig
from .app_ui import DeviceProcessorUI

CHANNEL = "on_external_event"


class DeviceProcessor(Application):
    config: DeviceProcessorConfig  # type hint for the IDE

    async def setup(self):
        self.ui = DeviceProcessorUI()
        self.ui_manager.add_children(*self.ui.fetch())
        self.ui_manager.set_variant(ApplicationVariant.stacked)

    async def on_message_create(self, event: MessageCreateEvent):
        if event.channel_name != CHANNEL:
            return
        data = event.message.data

        # Update the UI
        self.ui.update_from_event(data)
        await self.ui_manager.push_async()

        # Update the connection status
        now = datetime.now(UTC)
        await self.ping_connection(
            online_at=now,
            connection_status=ConnectionStatus.periodic_unknown,
            connection_type=ConnectionType.periodic,
            offline_at=now + timedelta(hours=1),
        )
        await self.set_tag("events", await self.get_tag("events", 0) + 1)
