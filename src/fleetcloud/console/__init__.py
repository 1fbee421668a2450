"""The web console: server-rendered pages at ``/`` with a little JavaScript for live
updates over the websocket gateway (docs/console.md)."""

from fleetcloud.console.routes import routes

__all__ = ["routes"]
