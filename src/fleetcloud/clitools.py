"""What the ``fleetcloud`` commands share: the options of a command that talks to a
running server (``--url``, ``--token``) or to the database (``--database``), ``--json``
output, JSON arguments, and how an error ends a command.

A fleetcloud error — the server refused a call, could not be reached, a file was
missing — ends the command with ``Error: <message>`` on stderr and exit status 1,
never a traceback. A command that calls the server reads like this::

    @click.command()
    @client_options
    @json_option
    def me(url: str, token: str, as_json: bool) -> None:
        found = request(url, token, "GET", "/api/me")
        emit(found, as_json, f"agent {found['agent_id']}")

``cli.py`` and the command groups it adds (``commands/cli.py``, ``apps/cli.py``) all
import from here, so none of them imports another's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fleetcloud.core import jsonish
from fleetcloud.core.errors import FleetError
from fleetcloud.settings import DEFAULT_DATABASE

if TYPE_CHECKING:
    from fleetcloud.client import Client

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "http://127.0.0.1:8000"
URL_HELP = "The server [env FLEETCLOUD_URL]"
TOKEN_HELP = "Bearer token [env FLEETCLOUD_TOKEN]"  # noqa: S105 - help text, not a secret
ADMIN_TOKEN_HELP = "An organisation admin's token [env FLEETCLOUD_TOKEN]"  # noqa: S105 - help
DATABASE_HELP = "sqlite:///FILE or postgresql://USER@HOST:PORT/DB [env FLEETCLOUD_DATABASE_URL]"
TIMEOUT_SECONDS = 30.0


# ---------------------------------------------------------------- errors


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """A fleetcloud error ends the command with its message, not a traceback."""
    try:
        yield
    except FleetError as exc:
        raise click.ClickException(exc.message) from exc


def run(coroutine: Awaitable[T]) -> T:
    """Run ``coroutine`` to its end; a fleetcloud error ends the command cleanly."""

    async def wrapped() -> T:
        return await coroutine

    with clean_errors():
        return asyncio.run(wrapped())


# ---------------------------------------------------------------- options


def _server_options(function: F, token_help: str) -> F:
    function = click.option(
        "--url", envvar="FLEETCLOUD_URL", default=DEFAULT_URL, show_default=True, help=URL_HELP
    )(function)
    return click.option("--token", envvar="FLEETCLOUD_TOKEN", required=True, help=token_help)(
        function
    )


def client_options(function: F) -> F:
    """``--url`` and ``--token`` (any agent's token) for a command that calls the server."""
    return _server_options(function, TOKEN_HELP)


def admin_client_options(function: F) -> F:
    """``--url`` and ``--token``, for commands only an organisation admin may run."""
    return _server_options(function, ADMIN_TOKEN_HELP)


def json_option(function: F) -> F:
    """``--json``: print JSON for scripts instead of text for people (``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts")(function)


def database_option(function: F) -> F:
    """``--database`` for a command that works on the database directly."""
    return click.option(
        "--database",
        envvar="FLEETCLOUD_DATABASE_URL",
        default=DEFAULT_DATABASE,
        show_default=True,
        help=DATABASE_HELP,
    )(function)


# ---------------------------------------------------------------- calling the server


def connect(url: str, token: str, timeout: float = TIMEOUT_SECONDS) -> Client:
    """A client for the server (use it inside :func:`clean_errors`)."""
    from fleetcloud.client import Client  # httpx is imported only by commands that need it

    return Client(url, token, timeout=timeout)


def request(
    url: str, token: str, method: str, path: str, *, timeout: float = TIMEOUT_SECONDS, **kwargs: Any
) -> Any:
    """One call to the server: its JSON answer, or the command ends with the server's
    error message (``kwargs`` go to httpx: ``json``, ``params``, ``content`` …)."""
    with clean_errors(), connect(url, token, timeout) as client:
        return client.request(method, path, **kwargs)


# ---------------------------------------------------------------- JSON in and out


def json_value(text: str | None, what: str) -> Any:
    """``text`` parsed as JSON (None when not given); invalid JSON is a usage error
    naming ``what``."""
    if text is None:
        return None
    try:
        return jsonish.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from exc


def json_object(text: str | None, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object (``{}`` when not given)."""
    value = json_value(text, what)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=what)
    return value


def emit(value: Any, as_json: bool, text: str) -> None:
    """Print ``value`` as JSON with ``--json``, else ``text``."""
    click.echo(jsonish.dumps_str(value) if as_json else text)


def print_json(value: Any) -> None:
    click.echo(jsonish.dumps_str(value))
