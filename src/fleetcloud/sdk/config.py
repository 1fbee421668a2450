"""App configuration: a ``Schema`` of typed elements, exported as JSON Schema (draft 2020-12).

::

    class MyAppConfig(config.Schema):
        def __init__(self):
            self.api_endpoint = config.String("API Endpoint", default="https://api.example.com")
            self.retries = config.Integer("Retries", default=3, minimum=0)

Each element's key in the deployment config is its ``name=`` or, by default, its display
name in snake case ("API Endpoint" → ``api_endpoint``), as Doover does. An element without
a default is required. Elements are registered per instance (assigned in ``__init__`` or
declared on the class), so building the schema again in a warm worker never duplicates
them; ``clear_elements()`` is kept for the seed's handler pattern.

At invocation start the SDK validates the installation's ``deployment_config`` against the
schema (``ConfigInvalid`` lists every problem) and binds the values: ``element.value``.
"""

from __future__ import annotations

import copy
import enum
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from jsonschema.validators import Draft202012Validator

from fleetcloud.core.errors import ConfigError
from fleetcloud.sdk.errors import ConfigInvalid, ConfigNotSet

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _NotSet:
    def __repr__(self) -> str:
        return "NotSet"


NotSet: Any = _NotSet()


def key_of(display_name: str) -> str:
    """``"API Endpoint"`` → ``"api_endpoint"``."""
    key = re.sub(r"[^a-z0-9]+", "_", display_name.lower()).strip("_")
    if not key:
        raise ValueError(f"cannot make a config key from {display_name!r}; pass name=")
    return key


def _json_default(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


class ConfigElement:
    """One value in the config. ``value`` is the deployment's value, else the default."""

    json_type: ClassVar[str | None] = None

    def __init__(
        self,
        display_name: str,
        *,
        default: Any = NotSet,
        description: str | None = None,
        hidden: bool = False,
        deprecated: bool | None = None,
        format: str | None = None,
        position: int | None = None,
        name: str | None = None,
    ) -> None:
        self.display_name = display_name
        self._name = name if name is not None else key_of(display_name)
        self.default = default
        self.description = description
        self.hidden = hidden
        self.deprecated = deprecated
        self.format = format
        self.position = position
        self._value: Any = NotSet

    @property
    def name(self) -> str:
        return self._name

    @property
    def required(self) -> bool:
        return self.default is NotSet

    @property
    def value(self) -> Any:
        return self._resolved()

    @value.setter
    def value(self, new: Any) -> None:
        self.load(new)

    def _resolved(self) -> Any:
        if self._value is not NotSet:
            return self._value
        if self.default is not NotSet:
            return copy.deepcopy(self.default)
        raise ConfigNotSet(
            f"config value {self._name!r} ({self.display_name}) is not set: it has no default "
            "and the deployment config did not give one"
        )

    def load(self, value: Any) -> None:
        """Bind a (validated) deployment value; ``None`` means "use the default"."""
        self._value = NotSet if value is None else value

    def type_schema(self) -> dict[str, Any]:
        """The type and constraint keywords (subclasses add theirs)."""
        return {"type": self.json_type} if self.json_type else {}

    def to_schema(self, position: int | None = None) -> dict[str, Any]:
        schema: dict[str, Any] = {"title": self.display_name}
        if self.description is not None:
            schema["description"] = self.description
        schema.update(self.type_schema())
        if self.format is not None:
            schema["format"] = self.format
        if not self.required:
            _allow_null(schema)
            if self.default is not NotSet and self.default is not None:
                schema["default"] = _json_default(self.default)
        if self.deprecated is not None:
            schema["deprecated"] = self.deprecated
        schema["x-name"] = self._name
        schema["x-hidden"] = self.hidden
        schema["x-required"] = self.required
        where = self.position if self.position is not None else position
        if where is not None:
            schema["x-position"] = where
        return schema

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display_name!r}, name={self._name!r})"


def _allow_null(schema: dict[str, Any]) -> None:
    kind = schema.get("type")
    if isinstance(kind, str):
        schema["type"] = [kind, "null"]
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]


def _put(schema: dict[str, Any], keyword: str, value: Any) -> None:
    if value is not None:
        schema[keyword] = value


class Integer(ConfigElement):
    json_type = "integer"

    def __init__(
        self,
        display_name: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: float | None = None,
        exclusive_maximum: float | None = None,
        multiple_of: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(display_name, **kwargs)
        self.minimum = minimum
        self.maximum = maximum
        self.exclusive_minimum = exclusive_minimum
        self.exclusive_maximum = exclusive_maximum
        self.multiple_of = multiple_of

    def type_schema(self) -> dict[str, Any]:
        schema = super().type_schema()
        _put(schema, "minimum", self.minimum)
        _put(schema, "maximum", self.maximum)
        _put(schema, "exclusiveMinimum", self.exclusive_minimum)
        _put(schema, "exclusiveMaximum", self.exclusive_maximum)
        _put(schema, "multipleOf", self.multiple_of)
        return schema


class Number(Integer):
    json_type = "number"


class Boolean(ConfigElement):
    json_type = "boolean"


class String(ConfigElement):
    json_type = "string"

    def __init__(
        self,
        display_name: str,
        *,
        min_length: int | None = None,
        max_length: int | None = None,
        pattern: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(display_name, **kwargs)
        self.min_length = min_length
        self.max_length = max_length
        self.pattern = pattern

    def type_schema(self) -> dict[str, Any]:
        schema = super().type_schema()
        _put(schema, "minLength", self.min_length)
        _put(schema, "maxLength", self.max_length)
        _put(schema, "pattern", self.pattern)
        return schema


class DateTime(String):
    """An ISO 8601 date-time string (``format: date-time``)."""

    def __init__(self, display_name: str, **kwargs: Any) -> None:
        kwargs.setdefault("format", "date-time")
        super().__init__(display_name, **kwargs)


class Application(String):
    """The app key of another installed app (``self.config.simulator_app_key.value``)."""

    def __init__(self, display_name: str, **kwargs: Any) -> None:
        kwargs.setdefault("format", "app-key")
        super().__init__(display_name, **kwargs)


class Enum(ConfigElement):
    """One of ``choices`` (strings or numbers, or a Python ``enum.Enum`` class).

    With an ``enum.Enum`` class, ``value`` is the member.
    """

    def __init__(
        self, display_name: str, *, choices: Iterable[Any] | type[enum.Enum], **kwargs: Any
    ) -> None:
        super().__init__(display_name, **kwargs)
        self.enum_class = choices if isinstance(choices, type) else None
        self.choices = [_json_default(choice) for choice in choices]
        if not self.choices:
            raise ValueError(f"config.Enum {display_name!r} needs at least one choice")

    def type_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if all(isinstance(choice, str) for choice in self.choices):
            schema["type"] = "string"
        elif all(isinstance(c, int | float) and not isinstance(c, bool) for c in self.choices):
            schema["type"] = "number"
        schema["enum"] = list(self.choices)
        return schema

    def load(self, value: Any) -> None:
        if value is not None and self.enum_class is not None:
            value = self.enum_class(value)
        super().load(value)


class Array(ConfigElement):
    """A list of ``element`` values; ``elements`` are the loaded items as elements."""

    json_type = "array"

    def __init__(
        self,
        display_name: str,
        *,
        element: ConfigElement | None = None,
        min_items: int | None = None,
        max_items: int | None = None,
        unique_items: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(display_name, **kwargs)
        self.element = element
        self.min_items = min_items
        self.max_items = max_items
        self.unique_items = unique_items
        self.elements: list[ConfigElement] = self._items(self.default)

    def _items(self, values: Any) -> list[ConfigElement]:
        if self.element is None or not isinstance(values, list):
            return []
        items = []
        for value in values:
            item = copy.deepcopy(self.element)
            item.load(value)
            items.append(item)
        return items

    def type_schema(self) -> dict[str, Any]:
        schema = super().type_schema()
        if self.element is not None:
            schema["items"] = self.element.to_schema()
        _put(schema, "minItems", self.min_items)
        _put(schema, "maxItems", self.max_items)
        _put(schema, "uniqueItems", self.unique_items)
        return schema

    def load(self, value: Any) -> None:
        super().load(value)
        self.elements = self._items(self.default if value is None else value)

    def _resolved(self) -> Any:
        raw = super()._resolved()
        if self.element is None:
            return raw
        return [item.value for item in self.elements]


class _Elements:
    """Keeps the config elements assigned as attributes, in order (Schema and Object)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ConfigElement) and not name.startswith("_"):
            self._register(value, name)
        object.__setattr__(self, name, value)

    def _element_map(self) -> dict[str, ConfigElement]:
        found: dict[str, ConfigElement] | None = self.__dict__.get("_elements")
        if found is None:
            found = {}
            object.__setattr__(self, "_elements", found)
            object.__setattr__(self, "_attributes", {})
            for cls in reversed(type(self).__mro__):
                for attribute, declared in vars(cls).items():
                    if isinstance(declared, ConfigElement) and not attribute.startswith("_"):
                        setattr(self, attribute, copy.deepcopy(declared))
        return found

    def _register(self, element: ConfigElement, attribute: str) -> None:
        elements = self._element_map()
        attributes: dict[str, str] = self.__dict__["_attributes"]
        existing = attributes.get(element.name)
        if element.name in elements and existing != attribute:
            raise ValueError(
                f"two config elements are named {element.name!r} ({existing} and {attribute}); "
                "give one of them name=…"
            )
        elements[element.name] = element
        attributes[element.name] = attribute

    def add_elements(self, *elements: ConfigElement) -> None:
        """Add elements that are not attributes (keyed by their names)."""
        for element in elements:
            self._register(element, f"<{element.name}>")

    @property
    def elements(self) -> list[ConfigElement]:
        return list(self._element_map().values())

    def _properties(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                name: element.to_schema(position)
                for position, (name, element) in enumerate(self._element_map().items())
            },
            "additionalProperties": True,
        }
        required = [name for name, element in self._element_map().items() if element.required]
        if required:
            schema["required"] = required
        return schema

    def _load_children(self, values: Mapping[str, Any]) -> None:
        for name, element in self._element_map().items():
            element.load(values.get(name))


class Object(_Elements, ConfigElement):
    """A group of elements (assign them as attributes in a subclass, or ``add_elements``)."""

    json_type = "object"

    def __init__(
        self, display_name: str, *elements: ConfigElement, collapsible: bool = True, **kwargs: Any
    ) -> None:
        ConfigElement.__init__(self, display_name, **kwargs)
        self.collapsible = collapsible
        self.add_elements(*elements)

    @property
    def required(self) -> bool:
        if self.default is not NotSet:
            return False
        return any(element.required for element in self.elements)

    def type_schema(self) -> dict[str, Any]:
        schema = self._properties()
        schema["x-collapsible"] = self.collapsible
        return schema

    def load(self, value: Any) -> None:
        ConfigElement.load(self, value)
        self._load_children(value if isinstance(value, Mapping) else {})

    def _resolved(self) -> Any:
        return {name: element.value for name, element in self._element_map().items()}


class Schema(_Elements):
    """An app's configuration. Subclass it and assign elements in ``__init__``."""

    @classmethod
    def clear_elements(cls) -> None:
        """Kept for the seed's handler pattern (``MyAppConfig.clear_elements()``).

        Elements live on each instance, so there is nothing left over from a previous
        invocation to clear; a fresh instance always starts from the class's definition.
        """

    @property
    def raw(self) -> dict[str, Any]:
        """The deployment config as loaded, including keys the schema does not declare."""
        found: dict[str, Any] = self.__dict__.get("_raw", {})
        return found

    def to_schema(self, title: str | None = None) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) document for this config."""
        return {
            "$schema": JSON_SCHEMA_DIALECT,
            "title": title or type(self).__name__,
            **self._properties(),
        }

    def problems(self, values: Any) -> list[str]:
        """Every way ``values`` breaks the schema, as readable lines (empty if none)."""
        validator = Draft202012Validator(self.to_schema())
        errors = sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
        return [f"{_where(error.absolute_path)}: {error.message}" for error in errors]

    def load(self, values: Mapping[str, Any] | None, app_key: str | None = None) -> None:
        """Validate and bind a deployment config; raise ``ConfigInvalid`` listing problems."""
        values = {} if values is None else values
        problems = self.problems(values)
        if problems:
            whose = f" for {app_key!r}" if app_key else ""
            raise ConfigInvalid(
                f"the deployment config{whose} does not match the app's config schema: "
                + "; ".join(problems),
                problems,
            )
        object.__setattr__(self, "_raw", dict(values))
        self._load_children(values)

    def export(self, path: str | Path, app_name: str) -> dict[str, Any]:
        """Write this schema as ``config_schema`` of ``app_name`` in ``doover_config.json``.

        The file is created if missing; its other keys (and the app's other keys) stay.
        """
        path = Path(path)
        schema = self.to_schema(title=app_name)
        Draft202012Validator.check_schema(schema)
        document = _read_config_file(path)
        entry = document.setdefault(app_name, {})
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: the entry for {app_name!r} is not a JSON object")
        entry["config_schema"] = schema
        path.write_text(json.dumps(document, indent=4, ensure_ascii=False) + "\n")
        return schema


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return document


def _where(path: Iterable[Any]) -> str:
    parts = [str(part) for part in path]
    return ".".join(parts) if parts else "(root)"


__all__ = [
    "JSON_SCHEMA_DIALECT",
    "Application",
    "Array",
    "Boolean",
    "ConfigElement",
    "DateTime",
    "Enum",
    "Integer",
    "NotSet",
    "Number",
    "Object",
    "Schema",
    "String",
    "key_of",
]
