"""UI components an app shows on its device's page, and ``@ui.callback`` for user commands.

Components render to the JSON layout that ``ui_state`` carries and the web console reads;
docs/sdk.md describes every field. Variables show values (``update()``); interactions
(parameters, actions, sliders) take values from the user through ``ui_cmds`` under the key
``<app_key>_<name>``, delivered to the app's ``@ui.callback(name)`` methods; ``coerce()``
sets an interaction's value from the app (e.g. ``None`` to clear a pressed button).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from fleetcloud.sdk.connection import to_ms
from fleetcloud.sdk.errors import AppError

if TYPE_CHECKING:
    from fleetcloud.sdk.ui_manager import UIManager

F = TypeVar("F", bound=Callable[..., Any])


class _Unset:
    def __repr__(self) -> str:
        return "NotSet"


NotSet: Any = _Unset()


class ApplicationVariant(enum.Enum):
    """How the console lays out an app's UI: its children inline, or in one submodule."""

    stacked = "stacked"
    submodule = "submodule"


class Colour(enum.StrEnum):
    blue = "blue"
    green = "green"
    yellow = "yellow"
    red = "red"
    grey = "grey"


def callback(name: str) -> Callable[[F], F]:
    """Mark an app method as the handler of user commands for component ``name``.

    The method is called as ``method(new_value)`` (sync or async) when ``ui_cmds`` holds a
    new value for ``<app_key>_<name>``.
    """

    def mark(function: F) -> F:
        function._ui_callback = name  # type: ignore[attr-defined]
        return function

    return mark


def callback_name(function: Any) -> str | None:
    name = getattr(function, "_ui_callback", None)
    return name if isinstance(name, str) else None


@dataclass(frozen=True, slots=True)
class Range:
    """A coloured band on a variable's scale."""

    label: str | None = None
    min: float | None = None
    max: float | None = None
    colour: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in (
                ("label", self.label),
                ("min", self.min),
                ("max", self.max),
                ("colour", None if self.colour is None else str(self.colour)),
            )
            if value is not None
        }


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_ms(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


class Element:
    """Base of every component: a name unique within the app, and a display name."""

    type: ClassVar[str] = "uiElement"

    def __init__(
        self,
        name: str,
        display_name: str | None = None,
        *,
        help_str: str | None = None,
        hidden: bool = False,
        position: int | None = None,
    ) -> None:
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise ValueError(f"a UI name uses letters, digits, _ and - only, not {name!r}")
        self.name = name
        self.display_name = display_name if display_name is not None else name
        self.help_str = help_str
        self.hidden = hidden
        self.position = position
        self._manager: UIManager | None = None

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        """This component's JSON layout (``app_key`` fills interactions' ``cmdKey``)."""
        result: dict[str, Any] = {
            "type": self.type,
            "name": self.name,
            "displayString": self.display_name,
        }
        where = self.position if self.position is not None else position
        if where is not None:
            result["position"] = where
        if self.help_str is not None:
            result["helpString"] = self.help_str
        if self.hidden:
            result["hidden"] = True
        return result

    def to_dict(self) -> dict[str, Any]:
        return self.render()

    def walk(self) -> Iterator[Element]:
        yield self

    def adopt(self, previous: dict[str, Any]) -> None:
        """Take what the last pushed state showed, for values this invocation did not set."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---------------------------------------------------------------- variables


class Variable(Element):
    """A value the app shows (read-only for users)."""

    type = "uiVariable"
    var_type: ClassVar[str] = "string"

    def __init__(
        self,
        name: str,
        display_name: str | None = None,
        curr_val: Any = NotSet,
        *,
        ranges: list[Range] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, display_name, **kwargs)
        self.ranges = list(ranges or [])
        self._value: Any = NotSet
        if curr_val is not NotSet and curr_val is not None:
            self.update(curr_val)

    @property
    def current_value(self) -> Any:
        return None if self._value is NotSet else self._value

    @current_value.setter
    def current_value(self, value: Any) -> None:
        self.update(value)

    def update(self, value: Any) -> None:
        """Show ``value`` (``None`` shows nothing)."""
        self._value = value

    def adopt(self, previous: dict[str, Any]) -> None:
        if self._value is NotSet and "currentValue" in previous:
            self._value = previous["currentValue"]

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        result = super().render(app_key, position)
        result["varType"] = self.var_type
        value = self.current_value
        if value is not None:
            result["currentValue"] = _json(value)
        if self.ranges:
            result["ranges"] = [r.to_dict() for r in self.ranges]
        return result


class NumericVariable(Variable):
    var_type = "float"

    def __init__(
        self,
        name: str,
        display_name: str | None = None,
        curr_val: float | None = None,
        precision: int | None = None,
        *,
        unit: str | None = None,
        units: str | None = None,
        min_val: float | None = None,
        max_val: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.precision = precision
        self.units = units if units is not None else unit
        self.min_val = min_val
        self.max_val = max_val
        super().__init__(name, display_name, curr_val, **kwargs)

    def update(self, value: Any) -> None:
        if self.precision is not None and isinstance(value, int | float):
            value = round(value, self.precision)
        super().update(value)

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        result = super().render(app_key, position)
        _put(result, "decPrecision", self.precision)
        _put(result, "units", self.units)
        _put(result, "min", self.min_val)
        _put(result, "max", self.max_val)
        return result


class TextVariable(Variable):
    var_type = "string"


class BooleanVariable(Variable):
    var_type = "bool"


class DateTimeVariable(Variable):
    """A moment; a ``datetime`` renders as Unix milliseconds."""

    var_type = "time"


def _put(result: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        result[key] = _json(value)


# ---------------------------------------------------------------- interactions


class Interaction(Element):
    """A component users act on; its value lives in ``ui_cmds`` under ``cmdKey``."""

    type = "uiInteraction"

    def __init__(
        self,
        name: str,
        display_name: str | None = None,
        *,
        default: Any = None,
        requires_confirm: bool = False,
        disabled: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, display_name, **kwargs)
        self.default = default
        self.requires_confirm = requires_confirm
        self.disabled = disabled
        self._value: Any = NotSet

    @property
    def current_value(self) -> Any:
        """The user's (or the app's coerced) value, else the default."""
        return self.default if self._value is NotSet or self._value is None else self._value

    @property
    def value(self) -> Any:
        return self.current_value

    def coerce(self, value: Any) -> None:
        """Set the value from the app; written to ``ui_cmds`` when the UI is pushed."""
        self._value = value
        if self._manager is not None:
            self._manager.coerced(self, value)

    def receive(self, value: Any) -> None:
        """The value ``ui_cmds`` holds (set by the SDK before the handler runs)."""
        self._value = value

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        result = super().render(app_key, position)
        if app_key is not None:
            result["cmdKey"] = f"{app_key}_{self.name}"
        result["requiresConfirm"] = self.requires_confirm
        if self.default is not None:
            result["default"] = _json(self.default)
        if self.disabled:
            result["disabled"] = True
        return result


class Action(Interaction):
    """A button. The console writes ``true`` to ``cmdKey`` when it is pressed."""

    type = "uiAction"

    def __init__(
        self,
        name: str,
        display_name: str | None = None,
        *,
        colour: str | None = None,
        requires_confirm: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, display_name, requires_confirm=requires_confirm, **kwargs)
        self.colour = colour

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        result = super().render(app_key, position)
        _put(result, "colour", self.colour)
        return result


class NumericParameter(Interaction):
    type = "uiFloatParam"

    def __init__(
        self,
        name: str,
        display_name: str | None = None,
        *,
        min_val: float | None = None,
        max_val: float | None = None,
        precision: int | None = None,
        unit: str | None = None,
        units: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, display_name, **kwargs)
        self.min_val = min_val
        self.max_val = max_val
        self.precision = precision
        self.units = units if units is not None else unit

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        result = super().render(app_key, position)
        _put(result, "min", self.min_val)
        _put(result, "max", self.max_val)
        _put(result, "decPrecision", self.precision)
        _put(result, "units", self.units)
        return result


class TextParameter(Interaction):
    type = "uiTextParam"

    def __init__(
        self, name: str, display_name: str | None = None, *, is_text_area: bool = False, **kw: Any
    ) -> None:
        super().__init__(name, display_name, **kw)
        self.is_text_area = is_text_area

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        result = super().render(app_key, position)
        result["isTextArea"] = self.is_text_area
        return result


class BooleanParameter(Interaction):
    type = "uiBoolParam"


class Slider(Interaction):
    type = "uiSlider"

    def __init__(
        self,
        name: str,
        display_name: str | None = None,
        *,
        min_val: float = 0,
        max_val: float = 100,
        step_size: float = 1,
        units: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, display_name, **kwargs)
        self.min_val = min_val
        self.max_val = max_val
        self.step_size = step_size
        self.units = units

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        result = super().render(app_key, position)
        result.update(min=self.min_val, max=self.max_val, stepSize=self.step_size)
        _put(result, "units", self.units)
        return result


# ---------------------------------------------------------------- containers and alerts


class Container(Element):
    """Holds children in order; names are unique across the whole app."""

    def __init__(
        self,
        name: str,
        display_name: str | None = None,
        children: list[Element] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, display_name, **kwargs)
        self._children: dict[str, Element] = {}
        self.add_children(*(children or []))

    @property
    def children(self) -> list[Element]:
        return list(self._children.values())

    def add_children(self, *children: Element) -> Container:
        for child in children:
            if not isinstance(child, Element):
                raise TypeError(f"UI children must be ui components, not {child!r}")
            self._children[child.name] = child
            if self._manager is not None:
                self._manager.attach(child)
        return self

    def remove_children(self, *children: Element) -> None:
        for child in children:
            self._children.pop(child.name, None)

    def walk(self) -> Iterator[Element]:
        yield self
        for child in self._children.values():
            yield from child.walk()

    def render_children(self, app_key: str | None) -> dict[str, Any]:
        return {
            child.name: child.render(app_key, position)
            for position, child in enumerate(self._children.values())
        }

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        result = super().render(app_key, position)
        result["children"] = self.render_children(app_key)
        return result


class Submodule(Container):
    """A collapsible group of components with an optional status line."""

    type = "uiSubmodule"

    def __init__(
        self,
        name: str,
        display_name: str | None = None,
        children: list[Element] | None = None,
        *,
        status: str | None = None,
        is_collapsed: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, display_name, children, **kwargs)
        self.status = status
        self.is_collapsed = is_collapsed
        self._status_set = False

    def update(self, status: str | None) -> None:
        """Set the status line."""
        self.status = status
        self._status_set = True

    def adopt(self, previous: dict[str, Any]) -> None:
        if not self._status_set and self.status is None and "statusString" in previous:
            self.status = previous["statusString"]

    def render(self, app_key: str | None = None, position: int | None = None) -> dict[str, Any]:
        result = super().render(app_key, position)
        _put(result, "statusString", self.status)
        result["defaultOpen"] = not self.is_collapsed
        return result


class AlertStream(Element):
    """The device's notifications; ``send_alert`` publishes to ``significantEvent``."""

    type = "uiAlertStream"

    def __init__(
        self, name: str = "significantEvent", display_name: str = "Notifications", **kw: Any
    ) -> None:
        super().__init__(name, display_name, **kw)

    async def send_alert(self, message: str, **fields: Any) -> None:
        """Publish ``{"message", "app_key", …fields}`` to the device's ``significantEvent``."""
        if self._manager is None:
            raise AppError("this AlertStream is not in the app's ui_manager (add_children it)")
        await self._manager.send_alert(message, fields)


def __getattr__(name: str) -> Any:
    if name == "UIManager":  # re-exported lazily: ui_manager imports this module
        from fleetcloud.sdk.ui_manager import UIManager

        return UIManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Action",
    "AlertStream",
    "ApplicationVariant",
    "BooleanParameter",
    "BooleanVariable",
    "Colour",
    "Container",
    "DateTimeVariable",
    "Element",
    "Interaction",
    "NumericParameter",
    "NumericVariable",
    "Range",
    "Slider",
    "Submodule",
    "TextParameter",
    "TextVariable",
    "UIManager",
    "Variable",
    "callback",
]
