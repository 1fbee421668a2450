"""Device apps: ``from fleetcloud.sdk.device import Application, run_app``.

Seed 001's device ``Application``: a process on the device that runs ``main_loop()``
every loop period and reaches the cloud only through the device agent's local API
(``fleetcloud agent``, ``http://127.0.0.1:48484``), which stores and forwards its writes
when the cloud is unreachable. See docs/sdk.md, "Device apps".

::

    application.py  Application: setup / main_loop / close, get_tag / set_tag, publish,
                    device_agent, config, ui_manager
    loop.py         DeviceRunner (one loop at a time), run_app / run_app_async
    agent.py        AgentTransport: the agent's local API (the transport seam)
    testing.py      DeviceHarness, FakeLocalAgent: step the loop in unit tests
"""

from __future__ import annotations

from fleetcloud.sdk import config, ui
from fleetcloud.sdk.application import DeviceAgent
from fleetcloud.sdk.device.agent import (
    AGENT_URL_ENV,
    DEFAULT_AGENT_URL,
    AgentTransport,
    DeviceTransport,
)
from fleetcloud.sdk.device.application import DEFAULT_LOOP_PERIOD, Application
from fleetcloud.sdk.device.loop import APP_KEY_ENV, DeviceRunner, run_app, run_app_async
from fleetcloud.sdk.errors import AgentUnavailable, ConfigInvalid, DataApiUnavailable

__all__ = [
    "AGENT_URL_ENV",
    "APP_KEY_ENV",
    "DEFAULT_AGENT_URL",
    "DEFAULT_LOOP_PERIOD",
    "AgentTransport",
    "AgentUnavailable",
    "Application",
    "ConfigInvalid",
    "DataApiUnavailable",
    "DeviceAgent",
    "DeviceRunner",
    "DeviceTransport",
    "config",
    "run_app",
    "run_app_async",
    "ui",
]
