"""``app.ui_manager``: an app's UI tree, pushed to ``ui_state``; user commands from ``ui_cmds``.

Push: the app's tree renders to one ``uiApplication`` object, written with
``PATCH …/ui_state/aggregate?replace=state.children.<app_key>`` and body
``{"state": {"children": {app_key: <application>}}}`` — only when it differs from what
``ui_state`` already holds. Variables the invocation did not set keep the values the last
push showed, so a processor that updates one reading does not blank the others.

Commands: the console writes ``{"<app_key>_<name>": value}`` into ``ui_cmds``. At the
start of an invocation (after ``setup()``) the SDK calls the app's ``@ui.callback(name)``
methods for the commands it has not handled yet:

- invoked by a message on the device's own ``ui_cmds``: each of the app's keys in that
  message (a repeated press is a new command); a redelivered message is skipped;
- otherwise: each of the app's keys whose value in the ``ui_cmds`` aggregate differs from
  the last value handled.

What was handled is kept in the app's tag ``_ui_cmds_handled``
(``{"values": {name: value}, "message_id": "…"}``), flushed with the other tags.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fleetcloud.sdk.data import ALERT_CHANNEL, UI_CMDS_CHANNEL, UI_STATE_CHANNEL, DataClient
from fleetcloud.sdk.errors import AppError
from fleetcloud.sdk.tags import TagBuffer
from fleetcloud.sdk.ui import ApplicationVariant, Element, Interaction, callback_name

HANDLED_TAG = "_ui_cmds_handled"


def callbacks_of(owner: object) -> dict[str, Callable[..., Any]]:
    """``{component name: bound method}`` for ``owner``'s ``@ui.callback`` methods."""
    found: dict[str, Callable[..., Any]] = {}
    for cls in reversed(type(owner).__mro__):
        for attribute, function in vars(cls).items():
            name = callback_name(function)
            if name is not None:
                found[name] = getattr(owner, attribute)
    return found


async def deliver_commands(
    manager: UIManager, owner: object, tags: TagBuffer, message: tuple[Any, Any] | None = None
) -> None:
    """Refresh the components from the last push and ``ui_cmds``, then call ``owner``'s
    callbacks for the pending commands; what was handled goes to the ``HANDLED_TAG`` tag."""
    manager.adopt_previous()
    if not callbacks_of(owner):
        return
    handled = tags.get(HANDLED_TAG, {})
    tags.set(HANDLED_TAG, await manager.dispatch(owner, handled, message))


def remember_coerced(manager: UIManager, owner: object, tags: TagBuffer) -> None:
    """Values the app coerced count as handled: they must not come back as commands."""
    if manager.coerced_values and callbacks_of(owner):
        handled = tags.get(HANDLED_TAG, {})
        values = {**(handled.get("values") or {}), **manager.coerced_values}
        tags.set(HANDLED_TAG, {**handled, "values": values})
    manager.coerced_values.clear()


def pending_commands(
    app_key: str,
    cmds: Mapping[str, Any],
    handled: Mapping[str, Any],
    message_data: Any = None,
) -> dict[str, Any]:
    """The commands to deliver: ``{component name: value}`` (see the module docstring)."""
    prefix = f"{app_key}_"
    from_message = message_data is not None
    source = message_data if isinstance(message_data, Mapping) else ({} if from_message else cmds)
    return {
        key[len(prefix) :]: value
        for key, value in source.items()
        if key.startswith(prefix)
        and value is not None
        and (from_message or handled.get(key[len(prefix) :]) != value)
    }


def app_node(ui_state: Mapping[str, Any], app_key: str) -> dict[str, Any] | None:
    """This app's ``uiApplication`` inside a ``ui_state`` aggregate, if there is one."""
    state = ui_state.get("state")
    children = state.get("children") if isinstance(state, Mapping) else None
    node = children.get(app_key) if isinstance(children, Mapping) else None
    return dict(node) if isinstance(node, Mapping) else None


def _by_name(node: Mapping[str, Any], found: dict[str, dict[str, Any]]) -> None:
    children = node.get("children")
    if not isinstance(children, Mapping):
        return
    for name, child in children.items():
        if isinstance(child, Mapping):
            found[str(name)] = dict(child)
            _by_name(child, found)


class UIManager:
    def __init__(self, app_key: str | None = None, display_name: str | None = None) -> None:
        self.app_key = app_key
        self.display_name = display_name
        self.variant: ApplicationVariant | str | None = None
        self._children: dict[str, Element] = {}
        self._names: dict[str, Element] = {}
        self._api: DataClient | None = None
        self._agent_id: int | None = None
        self._baseline: dict[str, Any] | None = None
        self._cmds: dict[str, Any] = {}
        self._pending_cmds: dict[str, Any] = {}
        self.coerced_values: dict[str, Any] = {}
        self.pushes = 0  # writes made by push_async in this invocation

    # ------------------------------------------------------------ building the tree

    def add_children(self, *children: Element) -> UIManager:
        for child in children:
            self.attach(child)
            self._children[child.name] = child
        return self

    def remove_children(self, *children: Element) -> None:
        for child in children:
            self._children.pop(child.name, None)
            for element in child.walk():
                self._names.pop(element.name, None)

    def attach(self, element: Element) -> None:
        for item in element.walk():
            known = self._names.get(item.name)
            if known is not None and known is not item:
                raise ValueError(f"two UI components are named {item.name!r}; names are unique")
            self._names[item.name] = item
            item._manager = self

    @property
    def children(self) -> list[Element]:
        return list(self._children.values())

    def set_variant(self, variant: ApplicationVariant | str) -> None:
        self.variant = variant

    def set_display_name(self, display_name: str | None) -> None:
        self.display_name = display_name

    def get_element(self, name: str) -> Element | None:
        return self._names.get(name)

    def interactions(self) -> dict[str, Interaction]:
        return {n: e for n, e in self._names.items() if isinstance(e, Interaction)}

    def render(self) -> dict[str, Any]:
        """The ``uiApplication`` this app shows (the layout in docs/sdk.md)."""
        variant = self.variant
        if isinstance(variant, ApplicationVariant):
            variant = variant.value
        result: dict[str, Any] = {
            "type": "uiApplication",
            "name": self.app_key,
            "displayString": self.display_name or self.app_key,
            "children": {
                child.name: child.render(self.app_key, position)
                for position, child in enumerate(self._children.values())
            },
        }
        if variant is not None:
            result["variant"] = variant
        return result

    # ------------------------------------------------------------ one invocation

    def bind(self, app_key: str, agent_id: int, api: DataClient) -> None:
        self.app_key = app_key
        self._agent_id = agent_id
        self._api = api

    def load_state(self, ui_state: Mapping[str, Any], ui_cmds: Mapping[str, Any]) -> None:
        """What ``ui_state`` and ``ui_cmds`` held when the invocation started."""
        self._baseline = app_node(ui_state, self.app_key or "")
        self._cmds = dict(ui_cmds)

    def load_cmds(self, ui_cmds: Mapping[str, Any]) -> None:
        """A newer ``ui_cmds`` aggregate (a device app reads it every loop)."""
        self._cmds = dict(ui_cmds)

    def adopt_previous(self) -> None:
        """Fill unset values from the last push, and interactions from ``ui_cmds``."""
        previous: dict[str, dict[str, Any]] = {}
        if self._baseline is not None:
            _by_name(self._baseline, previous)
        for name, element in self._names.items():
            if name in previous:
                element.adopt(previous[name])
            if isinstance(element, Interaction):
                element.receive(self._cmds.get(f"{self.app_key}_{name}"))

    async def dispatch(
        self, owner: object, handled: Mapping[str, Any], message: tuple[Any, Any] | None
    ) -> dict[str, Any]:
        """Deliver pending commands to ``owner``'s callbacks; returns the new handled record."""
        callbacks = callbacks_of(owner)
        values = dict(handled.get("values") or {})
        message_id, message_data = message if message is not None else (None, None)
        last_message = handled.get("message_id")
        record: dict[str, Any] = {"values": values}
        if message_id is not None or last_message is not None:
            record["message_id"] = str(message_id if message_id is not None else last_message)
        if message_id is not None and str(message_id) == last_message:
            return record  # a redelivery of a message handled already
        commands = pending_commands(self.app_key or "", self._cmds, values, message_data)
        for name, value in commands.items():
            function = callbacks.get(name)
            if function is None:
                continue
            element = self._names.get(name)
            if isinstance(element, Interaction):
                element.receive(value)
            values[name] = value
            result = function(value)
            if inspect.isawaitable(result):
                await result
        return record

    def coerced(self, interaction: Interaction, value: Any) -> None:
        self._pending_cmds[interaction.name] = value
        self.coerced_values[interaction.name] = value

    async def push_async(self, force: bool = False) -> bool:
        """Write the UI to ``ui_state`` (and coerced values to ``ui_cmds``) if they changed."""
        api = self._require_api()
        pushed = False
        rendered = self.render()
        if force or self._state_changed(rendered):
            body = {"state": {"children": {self.app_key: rendered}}}
            replace = f"state.children.{self.app_key}"
            await api.update_aggregate(self._agent_id or 0, UI_STATE_CHANNEL, body, replace=replace)
            self._baseline = rendered
            pushed = True
        pushed = await self._push_cmds(api) or pushed
        self.pushes += pushed
        return pushed

    async def _push_cmds(self, api: DataClient) -> bool:
        patch = {
            f"{self.app_key}_{name}": value
            for name, value in self._pending_cmds.items()
            if self._cmds.get(f"{self.app_key}_{name}") != value
        }
        if patch:  # (kept pending until written: a device app retries at its next loop)
            await api.update_aggregate(self._agent_id or 0, UI_CMDS_CHANNEL, patch)
            self._cmds.update(patch)
        self._pending_cmds.clear()
        return bool(patch)

    def _state_changed(self, rendered: dict[str, Any]) -> bool:
        if self._baseline is None and not rendered["children"]:
            return False  # an app without a UI writes nothing
        return rendered != self._baseline

    async def send_alert(self, message: str, fields: Mapping[str, Any]) -> None:
        api = self._require_api()
        data = {"message": message, "app_key": self.app_key, **fields}
        await api.publish_message(self._agent_id or 0, ALERT_CHANNEL, data)

    def _require_api(self) -> DataClient:
        if self._api is None:
            raise AppError("the UI can only be pushed during an invocation (after setup starts)")
        return self._api
