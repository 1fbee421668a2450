"""A device's UI: the ``ui_state`` layout turned into what a page shows, and a user's input
turned into the value written to ``ui_cmds`` (pure; docs/sdk.md describes the layout).

``ui_state`` is ``{"state": {"children": {app_key: <uiApplication>}}}``; each component
has ``type``, ``name``, ``displayString`` and ``position`` (sort by it: key order is not
kept by every store). Interactions carry ``cmdKey`` (``<app_key>_<name>``), the key whose
value lives in ``ui_cmds``. ``static/device.js`` formats live values with the same rules
as ``display`` here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

from fleetcloud.core import jsonish
from fleetcloud.core.errors import BadRequest, Conflict

VARIABLE = "uiVariable"
CONTAINERS = {"uiApplication", "uiSubmodule"}
INTERACTIONS = {"uiAction", "uiFloatParam", "uiTextParam", "uiBoolParam", "uiSlider"}
MAX_TEXT = 10_000


@dataclass(slots=True)
class Node:
    """One component as a page shows it."""

    type: str
    name: str
    label: str
    app_key: str
    spec: dict[str, Any]
    value: Any = None
    text: str = ""
    tone: str | None = None
    children: list[Node] = field(default_factory=list)

    @property
    def cmd_key(self) -> str:
        key = self.spec.get("cmdKey")
        return key if isinstance(key, str) else f"{self.app_key}_{self.name}"

    @property
    def dom_id(self) -> str:
        return f"ui-{self.app_key}-{self.name}"


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def display(spec: Mapping[str, Any], value: Any) -> str:
    """``value`` as the component shows it: precision, units, yes/no, a UTC time."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "Yes" if value else "No"
    units = spec.get("units")
    suffix = f" {units}" if isinstance(units, str) and units else ""
    if spec.get("varType") == "time" and _number(value):
        moment = datetime.fromtimestamp(value / 1000, UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if _number(value):
        precision = spec.get("decPrecision")
        if isinstance(precision, int) and not isinstance(precision, bool) and precision >= 0:
            return f"{value:.{precision}f}{suffix}"
        return f"{value}{suffix}"
    if isinstance(value, str):
        return f"{value}{suffix}"
    return jsonish.dumps_str(value)


def tone(spec: Mapping[str, Any], value: Any) -> str | None:
    """The colour of the first of the variable's ``ranges`` that holds ``value``."""
    ranges = spec.get("ranges")
    if not _number(value) or not isinstance(ranges, list):
        return None
    for band in ranges:
        if not isinstance(band, dict):
            continue
        low, high = band.get("min"), band.get("max")
        if (not _number(low) or value >= low) and (not _number(high) or value <= high):
            colour = band.get("colour")
            return colour if isinstance(colour, str) else None
    return None


def _sorted_children(spec: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    children = spec.get("children")
    if not isinstance(children, Mapping):
        return []
    found = [
        (str(k), v) for k, v in children.items() if isinstance(v, dict) and not v.get("hidden")
    ]

    def order(item: tuple[str, dict[str, Any]]) -> tuple[float, str]:
        position = item[1].get("position")
        return (position if _number(position) else math.inf, item[0])

    return sorted(found, key=order)


def node(app_key: str, name: str, spec: dict[str, Any], cmds: Mapping[str, Any]) -> Node:
    kind = str(spec.get("type", ""))
    label = spec.get("displayString")
    shown = Node(kind, name, label if isinstance(label, str) else name, app_key, spec)
    if kind == VARIABLE:
        shown.value = spec.get("currentValue")
        shown.tone = tone(spec, shown.value)
    elif kind in INTERACTIONS:
        current = cmds.get(shown.cmd_key)
        shown.value = spec.get("default") if current is None else current
    shown.text = display(spec, shown.value)
    if kind in CONTAINERS:
        shown.children = [node(app_key, n, child, cmds) for n, child in _sorted_children(spec)]
    return shown


def applications(ui_state: Any, ui_cmds: Any) -> list[Node]:
    """Every app's UI on the device, in order, with values from ``ui_cmds`` filled in."""
    state = ui_state.get("state") if isinstance(ui_state, dict) else None
    cmds = ui_cmds if isinstance(ui_cmds, dict) else {}
    apps = _sorted_children(state) if isinstance(state, dict) else []
    return [node(key, str(spec.get("name") or key), spec, cmds) for key, spec in apps]


def walk(nodes: list[Node]) -> Iterator[Node]:
    for item in nodes:
        yield item
        yield from walk(item.children)


def find_interaction(ui_state: Any, cmd_key: str) -> Node | None:
    """The interaction whose ``cmdKey`` is ``cmd_key``, if the device's UI shows one."""
    for item in walk(applications(ui_state, {})):
        if item.type in INTERACTIONS and item.cmd_key == cmd_key:
            return item
    return None


def command_value(item: Node, raw: Any) -> Any:
    """The value a user's input writes to ``ui_cmds`` (400 with the reason if it is bad)."""
    if item.spec.get("disabled"):
        raise Conflict(f"{item.label} is disabled")
    if item.type == "uiAction":
        return True
    if item.type in ("uiFloatParam", "uiSlider"):
        return _bounded_number(item, raw)
    if item.type == "uiBoolParam":
        return _boolean(item, raw)
    text = raw if isinstance(raw, str) else "" if raw is None else str(raw)
    if len(text) > MAX_TEXT:
        raise BadRequest(f"{item.label} takes at most {MAX_TEXT} characters")
    return text


def _bounded_number(item: Node, raw: Any) -> int | float:
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{item.label} must be a number, not {raw!r}") from None
    if isinstance(raw, bool) or not math.isfinite(value):
        raise BadRequest(f"{item.label} must be a number, not {raw!r}")
    low, high = item.spec.get("min"), item.spec.get("max")
    if _number(low) and value < low:
        raise BadRequest(f"{item.label} must be at least {display(item.spec, low)}")
    if _number(high) and value > high:
        raise BadRequest(f"{item.label} must be at most {display(item.spec, high)}")
    return int(value) if value.is_integer() else value


def _boolean(item: Node, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "on", "1", "yes"):
        return True
    if text in ("false", "off", "0", "no", ""):
        return False
    raise BadRequest(f"{item.label} must be true or false, not {raw!r}")
