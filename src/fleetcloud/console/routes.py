"""The console's routes: pages at ``/``, their script endpoints, the live websocket and
the static files (served from the package, so the wheel carries them)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from . import device, devices, live, signin


def routes() -> list[BaseRoute]:
    return [
        Route("/", signin.home, methods=["GET"]),
        Route("/signin", signin.signin_page, methods=["GET"]),
        Route("/signin", signin.signin, methods=["POST"]),
        Route("/signout", signin.signout, methods=["POST"]),
        Route("/devices", devices.devices_page, methods=["GET"]),
        Route("/devices/{agent_id}", device.device_page, methods=["GET"]),
        Route("/devices/{agent_id}/ui", device.device_ui, methods=["GET"]),
        Route("/devices/{agent_id}/series", device.device_series, methods=["GET"]),
        Route("/devices/{agent_id}/ui_cmds", device.device_command, methods=["POST"]),
        WebSocketRoute("/console/live", live.endpoint),
        Mount(
            "/console/static",
            StaticFiles(packages=[("fleetcloud.console", "static")]),
            name="console-static",
        ),
    ]
