"""Unit-test an app with no server: build events, run them, look at what the app did.

::

    from fleetcloud.sdk.testing import AppHarness

    harness = AppHarness(lambda: MyApp(config=MyAppConfig()), app_key="my_app",
                         deployment_config={"api_endpoint": "https://example.com"})
    harness.invoke(harness.message_create("sensor_data", {"temperature": 21.5}))
    assert harness.tags["last_temperature"] == 21.5
    assert harness.ui_element("temp")["currentValue"] == 21.5

The harness runs the real ``run_app`` pipeline; only the data API is replaced, by
``FakeDataAPI`` (the ``Transport`` seam), which keeps channels in memory with the
server's semantics: messages merge into aggregates (RFC 7396), ``replace=`` swaps a
subtree, unknown agents are 404. State carries over between invocations, and each event's
``d.upgrade`` is filled from it at invocation time, as the runtime does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetcloud.core.errors import NotFound
from fleetcloud.core.ids import new_id, timestamp_ms
from fleetcloud.core.merge import apply_update, merge_patch
from fleetcloud.sdk.application import Application
from fleetcloud.sdk.codec import normalize
from fleetcloud.sdk.data import (
    ALERT_CHANNEL,
    CONNECTION_CHANNEL,
    TAG_CHANNEL,
    UI_CMDS_CHANNEL,
    UI_STATE_CHANNEL,
)
from fleetcloud.sdk.envelope import build_envelope
from fleetcloud.sdk.runner import InvocationContext, run_app_async, run_sync
from fleetcloud.sdk.tags import diff
from fleetcloud.sdk.ui_manager import app_node

ChannelKey = tuple[int, str]


@dataclass(frozen=True, slots=True)
class Call:
    """One write the app made through the data API."""

    method: str  # "publish" | "update_aggregate"
    agent_id: int
    channel: str
    data: Any
    replace: str | None = None


class FakeDataAPI:
    """An in-memory data API implementing ``fleetcloud.sdk.transport.Transport``."""

    def __init__(self, organisation_id: int, author_id: int, agents: list[dict[str, Any]]):
        self.organisation_id = organisation_id
        self.author_id = author_id
        self.agents = agents
        self.aggregates: dict[ChannelKey, Any] = {}
        self.histories: dict[ChannelKey, list[dict[str, Any]]] = {}
        self.calls: list[Call] = []

    # ------------------------------------------------------------ Transport

    async def publish(self, agent_id: int, channel: str, data: Any) -> dict[str, Any]:
        self._known(agent_id)
        data = normalize(data, "the message")  # what the HTTP transport would send
        self.calls.append(Call("publish", agent_id, channel, data))
        return self.put_message(agent_id, channel, data, self.author_id)

    async def update_aggregate(
        self, agent_id: int, channel: str, data: Any, replace: str | None = None
    ) -> dict[str, Any]:
        self._known(agent_id)
        data = normalize(data, "the aggregate patch")
        self.calls.append(Call("update_aggregate", agent_id, channel, data, replace))
        self.patch_aggregate(agent_id, channel, data, replace)
        return self.aggregate_json(agent_id, channel)

    async def get_aggregate(self, agent_id: int, channel: str) -> dict[str, Any]:
        self._known(agent_id)
        if (agent_id, channel) not in self.aggregates:
            raise NotFound(f"channel {channel!r} of agent {agent_id} does not exist")
        return self.aggregate_json(agent_id, channel)

    async def list_agents(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [dict(a) for a in self.agents if kind is None or a["kind"] == kind]

    async def aclose(self) -> None:
        pass

    # ------------------------------------------------------------ the world around the app

    def put_message(self, agent_id: int, channel: str, data: Any, author_id: int) -> dict[str, Any]:
        """Store a message as the server would (history + merge into the aggregate)."""
        key = (agent_id, channel)
        message_id = new_id()
        message = {
            "id": str(message_id),
            "author_id": str(author_id),
            "channel": {"agent_id": str(agent_id), "name": channel},
            "data": data,
            "attachments": [],
            "timestamp": timestamp_ms(message_id),
        }
        self.histories.setdefault(key, []).append(message)
        self.aggregates[key] = merge_patch(self.aggregates.get(key), data)
        return message

    def patch_aggregate(
        self, agent_id: int, channel: str, data: Any, replace: str | None = None
    ) -> Any:
        """Merge (or replace a subtree of) an aggregate; returns the diff it made."""
        key = (agent_id, channel)
        before = self.aggregates.get(key)
        self.aggregates[key] = apply_update(before, data, replace)
        return diff(before if isinstance(before, dict) else {}, self.aggregates[key])

    def aggregate(self, agent_id: int, channel: str) -> Any:
        found = self.aggregates.get((agent_id, channel))
        return {} if found is None else found

    def aggregate_json(self, agent_id: int, channel: str) -> dict[str, Any]:
        return {"data": self.aggregate(agent_id, channel), "attachments": [], "last_updated": None}

    def history(self, agent_id: int, channel: str) -> list[dict[str, Any]]:
        return list(self.histories.get((agent_id, channel), []))

    def _known(self, agent_id: int) -> None:
        if not any(int(a["id"]) == agent_id for a in self.agents):
            raise NotFound(f"agent {agent_id} does not exist")


def find_element(node: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The rendered component ``name`` inside ``node`` (searched through submodules)."""
    pending = [node]
    while pending:
        current = pending.pop()
        children = current.get("children") or {}
        if name in children:
            found: dict[str, Any] = children[name]
            return found
        pending.extend(child for child in children.values() if isinstance(child, Mapping))
    return None


class Observed:
    """What an app did, read from a ``FakeDataAPI`` (shared by the processor and device
    harnesses): ``api`` is the fake, ``agent_id`` the app's agent, ``app_key`` its key."""

    api: FakeDataAPI
    agent_id: int
    app_key: str

    def published(self, channel: str | None = None, *, agent_id: int | None = None) -> list[Any]:
        """The data of every message the app published (optionally to one channel/agent)."""
        return [
            call.data
            for call in self.api.calls
            if call.method == "publish"
            and (channel is None or call.channel == channel)
            and (agent_id is None or call.agent_id == agent_id)
        ]

    def writes(self, channel: str, calls: list[Call] | None = None) -> list[Call]:
        """The app's writes (messages and aggregate patches) to ``channel``."""
        return [
            call for call in (self.api.calls if calls is None else calls) if call.channel == channel
        ]

    @property
    def tag_values(self) -> Any:
        return self.api.aggregate(self.agent_id, TAG_CHANNEL)

    @property
    def tags(self) -> dict[str, Any]:
        own = self.tag_values.get(self.app_key)
        return dict(own) if isinstance(own, dict) else {}

    @property
    def ui_state(self) -> dict[str, Any] | None:
        """This app's ``uiApplication`` in ``ui_state`` (``None`` if it never pushed)."""
        return app_node(self.api.aggregate(self.agent_id, UI_STATE_CHANNEL), self.app_key)

    def ui_element(self, name: str) -> dict[str, Any] | None:
        """The rendered component ``name`` (searched through submodules)."""
        return find_element(self.ui_state or {}, name)

    @property
    def ui_cmds(self) -> Any:
        return self.api.aggregate(self.agent_id, UI_CMDS_CHANNEL)

    @property
    def connection(self) -> Any:
        """The ``doover_connection`` aggregate (what ``ping_connection`` wrote)."""
        return self.api.aggregate(self.agent_id, CONNECTION_CHANNEL)

    @property
    def pings(self) -> list[Any]:
        return self.published(CONNECTION_CHANNEL)

    @property
    def alerts(self) -> list[Any]:
        """Alerts the app sent (``significantEvent`` messages)."""
        return self.published(ALERT_CHANNEL)

    def messages(self, channel: str, *, agent_id: int | None = None) -> list[Any]:
        """Every message's data in ``channel`` (by anyone), oldest first."""
        owner = self.agent_id if agent_id is None else agent_id
        return [m["data"] for m in self.api.history(owner, channel)]

    def aggregate(self, channel: str, *, agent_id: int | None = None) -> Any:
        return self.api.aggregate(self.agent_id if agent_id is None else agent_id, channel)


AppSource = Application | Callable[[], Application]


class AppHarness(Observed):
    """Runs one app against a ``FakeDataAPI``; see the module docstring.

    ``app``: an ``Application`` (reused) or a factory called per invocation, as the seed's
    ``handler`` does. Or pass ``handler=`` (the app's own ``handler(event, context)``).
    ``devices``: names of extra device agents (``get_device_agent`` finds them by name).
    """

    def __init__(
        self,
        app: AppSource | None = None,
        *,
        handler: Callable[[dict[str, Any], Any], Any] | None = None,
        app_key: str = "test_app",
        deployment_config: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        agent_kind: str = "device",
        devices: Iterable[str] = (),
        display_name: str | None = None,
    ) -> None:
        if (app is None) == (handler is None):
            raise ValueError("give the harness an app (or app factory), or a handler")
        self._app, self._handler = app, handler
        self.app_key = app_key
        self.organisation_id = new_id()
        self.organisation_agent_id = new_id()
        self.user_id = new_id()
        self.deployment_config = dict(deployment_config or {})
        self.display_name = display_name
        agents = [self._agent(self.organisation_agent_id, "organisation", "organisation")]
        self.device_ids: dict[str, int] = {}
        if agent_kind == "organisation":
            self.agent_id = self.organisation_agent_id
        else:
            self.agent_id = self._add_device(agents, "test-device")
        for name in devices:
            self._add_device(agents, name)
        self.api = FakeDataAPI(self.organisation_id, self.agent_id, agents)
        if tags:
            self.api.put_message(self.agent_id, TAG_CHANNEL, {app_key: dict(tags)}, self.agent_id)
        self.summaries: list[dict[str, Any]] = []
        self.last_calls: list[Call] = []

    def _agent(self, agent_id: int, kind: str, name: str) -> dict[str, Any]:
        return {
            "id": str(agent_id),
            "organisation_id": str(self.organisation_id),
            "kind": kind,
            "name": name,
        }

    def _add_device(self, agents: list[dict[str, Any]], name: str) -> int:
        agent_id = new_id()
        agents.append(self._agent(agent_id, "device", name))
        self.device_ids[name] = agent_id
        return agent_id

    # ------------------------------------------------------------ events

    def upgrade(self) -> dict[str, Any]:
        """``d.upgrade`` as the runtime would send it now."""
        return {
            "agent_id": str(self.agent_id),
            "organisation_id": str(self.organisation_id),
            "app_key": self.app_key,
            "deployment_config": dict(self.deployment_config),
            "ui_state": self.api.aggregate(self.agent_id, UI_STATE_CHANNEL),
            "ui_cmds": self.api.aggregate(self.agent_id, UI_CMDS_CHANNEL),
            "tag_values": self.api.aggregate(self.agent_id, TAG_CHANNEL),
            "connection_data": self.api.aggregate(self.agent_id, CONNECTION_CHANNEL),
            "token": "harness-token",
            "display_name": self.display_name,
        }

    def _event(self, op: str, data: Mapping[str, Any]) -> dict[str, Any]:
        fields = {"organisation_id": str(self.organisation_id), "event_id": str(new_id())}
        return build_envelope(op, {**fields, **data}, self.upgrade())

    def message_create(
        self,
        channel: str,
        data: Any,
        *,
        agent_id: int | None = None,
        author_id: int | None = None,
    ) -> dict[str, Any]:
        """A device (by default the app's own) publishes ``data`` to ``channel``."""
        owner = self.agent_id if agent_id is None else agent_id
        message = self.api.put_message(owner, channel, data, author_id or owner)
        return self._event(
            "on_message_create",
            {
                "message": message,
                "channel_name": channel,
                "owner_id": str(owner),
                "author_id": message["author_id"],
            },
        )

    def ui_command(self, name: str, value: Any, *, app_key: str | None = None) -> dict[str, Any]:
        """A user sets interaction ``name`` in the console (a ``ui_cmds`` message)."""
        key = f"{app_key or self.app_key}_{name}"
        return self.message_create(UI_CMDS_CHANNEL, {key: value}, author_id=self.user_id)

    def aggregate_update(
        self,
        channel: str,
        data: Any,
        *,
        agent_id: int | None = None,
        replace: str | None = None,
    ) -> dict[str, Any]:
        """Someone patches ``channel``'s aggregate with ``data``."""
        owner = self.agent_id if agent_id is None else agent_id
        changed = self.api.patch_aggregate(owner, channel, data, replace)
        return self._event(
            "on_aggregate_update",
            {
                "channel": {"agent_id": str(owner), "name": channel},
                "aggregate": self.api.aggregate_json(owner, channel),
                "diff": changed,
                "author_id": str(self.user_id),
            },
        )

    def schedule(self, schedule_id: str = "schedule-1") -> dict[str, Any]:
        return self._event(
            "on_schedule", {"schedule_id": schedule_id, "agent_id": str(self.agent_id)}
        )

    def ingestion(
        self,
        body: bytes | str | Mapping[str, Any] | list[Any],
        *,
        ingestion_id: str = "ingestion-1",
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A POST to the ingestion endpoint (a dict or list is sent as JSON)."""
        if isinstance(body, Mapping | list):
            body = json.dumps(body)
        raw = body.encode() if isinstance(body, str) else body
        return self._event(
            "on_ingestion_endpoint",
            {
                "payload": base64.b64encode(raw).decode(),
                "ingestion_id": ingestion_id,
                "agent_id": str(self.agent_id),
                "headers": dict(headers or {}),
            },
        )

    def deployment(self) -> dict[str, Any]:
        return self._event(
            "on_deployment",
            {
                "agent_id": str(self.agent_id),
                "app_id": str(new_id()),
                "app_install_id": str(new_id()),
            },
        )

    def manual_invoke(self, payload: Any = None) -> dict[str, Any]:
        return self._event("on_manual_invoke", {"payload": payload, "user_id": str(self.user_id)})

    # ------------------------------------------------------------ running

    def invoke(
        self, event: dict[str, Any], *, check: bool = True, refresh: bool = True
    ) -> dict[str, Any]:
        """Run ``event`` through ``run_app``; re-raise the app's error unless ``check=False``."""
        return run_sync(self.invoke_async(event, check=check, refresh=refresh))

    async def invoke_async(
        self, event: dict[str, Any], *, check: bool = True, refresh: bool = True
    ) -> dict[str, Any]:
        if refresh:
            event = {**event, "d": {**event["d"], "upgrade": self.upgrade()}}
        context = InvocationContext(transport=self.api, invocation_id=str(new_id()))
        start = len(self.api.calls)
        if self._handler is not None:
            self._handler(event, context)  # the app's own entry point (runs run_app itself)
        else:
            await run_app_async(self._make_app(), event, context)
        self.last_calls = self.api.calls[start:]
        summary = context.summary or {"status": "error", "error": "run_app was not called"}
        self.summaries.append(summary)
        if check and context.error is not None:
            raise context.error
        return summary

    def _make_app(self) -> Application:
        if self._app is None:
            raise ValueError("this harness runs a handler, not an app")
        return self._app if isinstance(self._app, Application) else self._app()


__all__ = ["AppHarness", "Call", "FakeDataAPI", "Observed", "find_element"]
