"""The console's routes: pages at ``/``, their script endpoints, the live websocket and
the static files (served from the package, so the wheel carries them)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from . import apps, commands, device, devices, jobs, live, signin


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
        Route("/apps", apps.apps_page, methods=["GET"]),
        Route("/apps/installations/{installation_id}", apps.installation_page, methods=["GET"]),
        Route("/apps/installations/{installation_id}/config", apps.save_config, methods=["POST"]),
        Route("/apps/installations/{installation_id}/invoke", apps.invoke, methods=["POST"]),
        Route(
            "/apps/installations/{installation_id}/invocations",
            apps.invocation_rows,
            methods=["GET"],
        ),
        Route("/apps/{app_id}", apps.app_page, methods=["GET"]),
        Route("/commands", commands.commands_page, methods=["GET"]),
        Route("/commands", commands.push, methods=["POST"]),
        Route("/commands/{request_id}", commands.command_page, methods=["GET"]),
        Route("/jobs", jobs.jobs_page, methods=["GET"]),
        Route("/jobs", jobs.create_job, methods=["POST"]),
        Route("/jobs/new", jobs.new_job_page, methods=["GET"]),
        Route("/jobs/{job_id}", jobs.job_page, methods=["GET"]),
        Route("/jobs/{job_id}/progress", jobs.job_progress, methods=["GET"]),
        Route("/jobs/{job_id}/cancel", jobs.cancel_job, methods=["POST"]),
        WebSocketRoute("/console/live", live.endpoint),
        Mount(
            "/console/static",
            StaticFiles(packages=[("fleetcloud.console", "static")]),
            name="console-static",
        ),
    ]
