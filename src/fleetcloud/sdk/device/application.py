"""``Application``: the base class of device apps (seed 001's device ``Application``).

A device app runs on the device as a long-lived process next to ``fleetcloud agent``.
``run_app`` (``fleetcloud.sdk.device.loop``) binds it to the agent's local API, calls
``setup()`` once, then ``main_loop()`` every ``loop_target_period`` seconds until the
process is told to stop, then ``close()``.
"""

from __future__ import annotations

from typing import Any

from fleetcloud.sdk.application import DeviceAgent
from fleetcloud.sdk.config import Schema
from fleetcloud.sdk.data import DataClient
from fleetcloud.sdk.errors import AppError
from fleetcloud.sdk.events import Message
from fleetcloud.sdk.tags import TagBuffer
from fleetcloud.sdk.transport import Transport
from fleetcloud.sdk.ui_manager import UIManager

DEFAULT_LOOP_PERIOD = 1.0


class _NotStarted:
    """The transport before ``run_app`` starts the app: every call explains itself."""

    def __getattr__(self, name: str) -> Any:
        raise AppError("the device agent is only reachable once run_app has started the app")


class Application:
    """Base class of a device app. Override ``setup``, ``main_loop`` and ``close`` (each
    may be ``async def`` or a plain ``def``).

    Once started: ``app_key``, ``agent_id`` (the device; 0 while it is not provisioned),
    ``device`` (what the agent says about it), ``config`` (the schema with this app's part
    of ``deployment_config`` bound, kept up to date every loop), ``deployment_config``
    (the raw values), ``display_name``, ``api``, ``ui_manager``.

    ``loop_target_period`` (seconds, default 1) is read before every wait, so ``setup`` or
    ``main_loop`` may change it.
    """

    config: Any
    loop_target_period: float = DEFAULT_LOOP_PERIOD

    def __init__(
        self,
        config: Schema | None = None,
        *args: Any,
        app_key: str | None = None,
        loop_target_period: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.config = config
        self.app_key = app_key or ""
        if loop_target_period is not None:
            self.loop_target_period = loop_target_period
        self.agent_id: int = 0
        self.device: dict[str, Any] = {}
        self.deployment_config: dict[str, Any] = {}
        self.display_name: str | None = None
        self.api = DataClient(_NotStarted())
        self.ui_manager = UIManager()
        self._tags = TagBuffer("", {})

    # ------------------------------------------------------------ lifecycle

    async def setup(self) -> None:
        """Called once, after the app is bound and before the first ``main_loop``."""

    async def main_loop(self) -> None:
        """Called every ``loop_target_period`` seconds."""

    async def close(self) -> None:
        """Called once when the app stops, after its last tags and UI are written."""

    # ------------------------------------------------------------ state

    def get_tag(self, key: str, default: Any = None, app_key: str | None = None) -> Any:
        """A tag of this app (or of ``app_key``'s app on this device); ``default`` if unset.

        Synchronous: it reads the agent's view of ``tag_values`` as of the start of this
        loop, plus this app's own ``set_tag`` calls since.
        """
        return self._tags.get(key, default, app_key)

    async def set_tag(self, key: str, value: Any) -> None:
        """Set a tag (``None`` clears it). A loop's changes are written once, after
        ``main_loop``, as one ``tag_values`` message through the agent."""
        self._tags.set(key, value)

    async def publish(self, channel: str, data: Any) -> Message:
        """Publish ``data`` to one of this device's channels, through the agent (queued on
        disk there until the cloud has it). Returns the message with its id."""
        return await self.api.publish_message(self.agent_id, channel, data)

    @property
    def device_agent(self) -> DeviceAgent:
        """``await self.device_agent.publish_to_channel_async(channel, json_str)``."""
        return DeviceAgent(self)

    # ------------------------------------------------------------ binding (run_app)

    def _bind(
        self, app_key: str, device: dict[str, Any], agent_id: int, transport: Transport
    ) -> None:
        self.app_key = app_key
        self.device = device
        self.agent_id = agent_id
        self.api = DataClient(transport)
        self.ui_manager.bind(app_key, agent_id, self.api)  # keeps children added before
