"""``run_app(app, event, context)``: one invocation, from envelope to summary.

Pipeline: read the envelope → bind the app (identity, config validated, tags, UI, a data
API client with the invocation's token) → ``setup()`` → deliver pending UI commands to
``@ui.callback`` methods → the handler → tags flushed (one merge-patch of ``tag_values``)
→ UI pushed if it changed → ``close()``. Tags and UI are written even when the handler
raised (an app may record ``last_error`` and re-raise); ``close()`` always runs.

The summary returned to the runtime::

    {"status": "ok" | "error" | "skipped", "handler": "on_schedule", "duration_ms": 3.2,
     "error": None | "ValueError: boom", "reason"?: "<why skipped>",
     "event_id", "app_key", "agent_id", "tags_flushed", "ui_pushed", "messages_published"}

``context`` may be ``None``, a dict, or any object (an AWS-Lambda-like context works).
The SDK reads ``api_url`` and ``transport`` from it (attributes or dict keys), and sets
``context.error`` and ``context.summary`` (if the object has those attributes) to the
exception the invocation ended with and its summary — so a runtime or a test harness
gets them even through a ``handler`` that discards ``run_app``'s return value.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fleetcloud.sdk.application import Application
from fleetcloud.sdk.data import TAG_CHANNEL, UI_CMDS_CHANNEL, UI_STATE_CHANNEL, WriteGuard
from fleetcloud.sdk.envelope import Invocation, resolve_api_url
from fleetcloud.sdk.errors import AppError
from fleetcloud.sdk.events import AggregateUpdateEvent, Event, MessageCreateEvent, parse_event
from fleetcloud.sdk.transport import HttpTransport, Transport
from fleetcloud.sdk.ui_manager import callbacks_of, deliver_commands, remember_coerced

log = logging.getLogger("fleetcloud.sdk")
T = TypeVar("T")


@dataclass
class InvocationContext:
    """What a runtime (or the test harness) may pass as ``context``."""

    api_url: str | None = None
    transport: Transport | None = None
    invocation_id: str | None = None
    error: BaseException | None = None
    summary: dict[str, Any] | None = None


@dataclass
class _Run:
    """What one invocation did, for its summary."""

    op: str | None = None
    event_id: str | None = None
    app_key: str | None = None
    agent_id: int | None = None
    status: str = "ok"
    reason: str | None = None
    error: BaseException | None = None
    tags_flushed: bool = False
    ui_pushed: bool = False
    published: int = 0
    started: float = field(default_factory=time.perf_counter)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self.status = "error"

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "status": self.status,
            "handler": self.op,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
            "event_id": self.event_id,
            "app_key": self.app_key,
            "agent_id": None if self.agent_id is None else str(self.agent_id),
            "tags_flushed": self.tags_flushed,
            "ui_pushed": self.ui_pushed,
            "messages_published": self.published,
        }
        if self.reason is not None:
            result["reason"] = self.reason
        return result


def run_app(app: Application, event: Any, context: Any = None) -> dict[str, Any]:
    """Run one invocation to completion and return its summary (see the module docstring).

    Synchronous, as the seed's ``handler(event, context)`` calls it; inside a running
    event loop, await ``run_app_async`` instead (this then runs on a helper thread).
    """
    return run_sync(run_app_async(app, event, context))


async def run_app_async(app: Application, event: Any, context: Any = None) -> dict[str, Any]:
    run = await invoke(app, event, context)
    summary = run.summary()
    _set_context(context, "error", run.error)
    _set_context(context, "summary", summary)
    return summary


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_loop = False
    else:
        in_loop = True
    if not in_loop:  # (outside the except block, so app errors do not chain to it)
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1, thread_name_prefix="fleetcloud-app") as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def invoke(app: Application, envelope: Any, context: Any = None) -> _Run:
    run = _Run()
    try:
        invocation = Invocation.from_envelope(envelope)
    except AppError as exc:
        log.error("cannot read the invocation envelope: %s", exc)
        run.fail(exc)
        return run
    run.op, run.app_key = invocation.op, invocation.upgrade.app_key
    run.agent_id, run.event_id = invocation.upgrade.agent_id, _text(invocation.data.get("event_id"))
    given = _context(context, "transport")
    try:
        transport = given or HttpTransport(
            resolve_api_url(_context(context, "api_url"), invocation.upgrade),
            invocation.api_token,
        )
    except AppError as exc:
        run.fail(exc)
        return run
    try:
        await _pipeline(app, invocation, transport, run)
    finally:
        if given is None:
            await transport.aclose()
    return run


async def _pipeline(app: Application, inv: Invocation, transport: Transport, run: _Run) -> None:
    try:
        app._bind(inv.upgrade, transport)
        event = parse_event(inv.op, inv.data, app.parse_ingestion_event_payload)
    except Exception as exc:
        log.error("invocation of %s failed before setup: %s", inv.op, exc)
        run.fail(exc)
        return
    run.reason = skip_reason(app, inv.op, event)
    if run.reason is not None:
        run.status = "skipped"
        return
    app._guard(invoking_guard(event, inv.upgrade.app_key))
    await _step(run, app.setup)
    if run.error is None:
        await _step(run, lambda: _deliver_commands(app, event))
    if run.error is None:
        await _step(run, lambda: getattr(app, inv.op)(event))
    await _finish(app, run)
    await _step(run, app.close)
    run.published = len(app.api.published)


async def _step(run: _Run, call: Callable[[], Awaitable[Any] | Any]) -> None:
    try:
        result = call()
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        log.exception("the app raised in %s", run.op)
        run.fail(exc)


async def _deliver_commands(app: Application, event: Event) -> None:
    await deliver_commands(app.ui_manager, app, app._tags, own_command_message(app, event))


async def _finish(app: Application, run: _Run) -> None:
    """Flush tags, then push the UI (even after a handler error)."""
    remember_coerced(app.ui_manager, app, app._tags)

    async def flush() -> None:
        patch = app._tags.flush_patch()
        if patch is not None:
            await app.api.publish_message(app.agent_id, TAG_CHANNEL, patch)
            app._tags.flushed()
            run.tags_flushed = True

    await _step(run, flush)
    await _step(run, app.ui_manager.push_async)
    run.ui_pushed = app.ui_manager.pushes > 0


def own_command_message(app: Application, event: Event) -> tuple[Any, Any] | None:
    """``(message id, data)`` if the app was invoked by a message on its own ``ui_cmds``."""
    if (
        isinstance(event, MessageCreateEvent)
        and event.channel_name == UI_CMDS_CHANNEL
        and event.owner_id in (None, app.agent_id)
    ):
        return event.message.id, event.message.data
    return None


def invoking_guard(event: Event, app_key: str) -> WriteGuard:
    if isinstance(event, MessageCreateEvent):
        return WriteGuard(event.owner_id, event.channel_name, app_key)
    if isinstance(event, AggregateUpdateEvent):
        return WriteGuard(event.channel.agent_id, event.channel.name, app_key)
    return WriteGuard(None, None, app_key)


def skip_reason(app: Application, op: str, event: Event) -> str | None:
    """Why this invocation needs no work: no handler, or the app's own write echoed back."""
    overridden = getattr(type(app), op, None) is not getattr(Application, op)
    if not overridden and not callbacks_of(app):
        return f"the app has no {op} handler"
    changed = _changed_keys(event)
    if changed is None or changed.channel not in (TAG_CHANNEL, UI_STATE_CHANNEL):
        return None
    if changed.agent_id == app.agent_id and changed.keys == {app.app_key}:
        return f"the event is this app's own {changed.channel} write"
    return None


@dataclass(frozen=True)
class _Changed:
    agent_id: int | None
    channel: str
    keys: set[str]


def _changed_keys(event: Event) -> _Changed | None:
    if isinstance(event, MessageCreateEvent):
        data, agent, channel = event.message.data, event.owner_id, event.channel_name
    elif isinstance(event, AggregateUpdateEvent):
        data, agent, channel = event.diff, event.channel.agent_id, event.channel.name
    else:
        return None
    if channel == UI_STATE_CHANNEL and isinstance(data, dict):
        state = data.get("state")
        data = state.get("children") if isinstance(state, dict) and set(data) == {"state"} else None
    if not isinstance(data, dict):
        return None
    return _Changed(agent, channel, {str(key) for key in data})


def _context(context: Any, name: str) -> Any:
    if context is None:
        return None
    if isinstance(context, dict):
        return context.get(name)
    return getattr(context, name, None)


def _set_context(context: Any, name: str, value: Any) -> None:
    if context is not None and not isinstance(context, dict) and hasattr(context, name):
        setattr(context, name, value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
