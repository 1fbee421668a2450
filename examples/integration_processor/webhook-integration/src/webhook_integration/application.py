"""The integration side of the seed's "Integration + Processor" pattern.

A partner system POSTs readings to this integration's ingestion URL. The integration
finds the device the reading is about, remembers the mapping in a tag, and forwards the
reading to that device's ``on_external_event`` channel, where the device's processor
picks it up.
"""

from fleetcloud.sdk.processor import Application, IngestionEndpointEvent

from .app_config import WebhookIntegrationConfig

CHANNEL = "on_external_event"


class WebhookIntegration(Application):
    config: WebhookIntegrationConfig  # type hint for the IDE

    async def on_ingestion_endpoint(self, event: IngestionEndpointEvent):
        payload = event.payload  # the JSON body, parsed by parse_ingestion_event_payload
        device_id = payload["device_id"]
        device_agent_id = await self.get_device_agent(device_id)

        # Store the device mapping
        devices = await self.get_tag("devices", {})
        devices[device_id] = device_agent_id
        await self.set_tag("devices", devices)

        # Forward to the device's channel
        await self.api.publish_message(device_agent_id, CHANNEL, payload)
