"""An installation's config form, generated from the app's JSON Schema (pure).

``fields(schema, config)`` turns the schema's properties into form fields — text, whole
and decimal numbers, yes/no, a choice (``enum``), a list of simple values (one per
line), a nested object (a group of fields), and JSON for anything else — each with its
label (``title``), description, default and constraints, in ``x-position`` order.
``read(schema, form, current)`` turns a submitted form back into a deployment config,
and ``field_errors(schema, config)`` checks it against the schema (jsonschema, draft
2020-12) and says which field each problem belongs to.

Keys the form does not show (``x-hidden``, or not in the schema at all) keep their
current values: saving the form never drops part of a config it did not display.

A field's form name is ``c`` followed by its path, each key escaped as in a JSON
Pointer (``~0`` for ``~``, ``~1`` for ``/``): ``c/limits/max``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

Path = tuple[str, ...]
SIMPLE = ("string", "integer", "number", "boolean")
PLATFORM_LABELS = {
    "dv_proc_subscriptions": "Subscriptions (channel names)",
    "dv_proc_schedules": "Schedule",
    "dv_proc_ingestion": "Ingestion endpoint",
    "dv_proc_extended_permissions": "Extended permissions",
}
"""Labels for the platform's own config keys, when the schema gives them no title."""
MAX_FIELDS = 400
"""More fields than this (nested objects included) and the form is one JSON editor."""


@dataclass(slots=True)
class Field:
    path: Path
    label: str
    kind: str  # text | integer | number | boolean | select | list | object | json
    description: str = ""
    required: bool = False
    nullable: bool = False
    value: str = ""  # the input's text (a select's chosen option, a checkbox's "true")
    default: Any = None
    options: list[tuple[str, str]] = field(default_factory=list)  # (value, label)
    item_kind: str = ""  # a list's item type
    attrs: dict[str, str] = field(default_factory=dict)  # HTML constraint attributes
    children: list[Field] = field(default_factory=list)
    error: str = ""

    @property
    def name(self) -> str:
        return "c/" + "/".join(k.replace("~", "~0").replace("/", "~1") for k in self.path)

    @property
    def id(self) -> str:
        plain = re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(self.path))[:60]
        digest = hashlib.sha1(self.name.encode(), usedforsecurity=False).hexdigest()
        return f"cfg-{plain}-{digest[:6]}"

    @property
    def has_default(self) -> bool:
        """Is there a default worth showing (not null, not empty)?"""
        return self.default not in (None, "", [], {})

    @property
    def default_text(self) -> str:
        return _show(self.default)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(_show(v) for v in value)
    return json.dumps(value)


# ---------------------------------------------------------------- schema → fields


def types_of(schema: Mapping[str, Any]) -> tuple[list[str], bool]:
    """The schema's non-null types, and whether ``null`` is allowed."""
    kind = schema.get("type")
    kinds = [kind] if isinstance(kind, str) else list(kind) if isinstance(kind, list) else []
    enum = schema.get("enum")
    nullable = "null" in kinds or (isinstance(enum, list) and None in enum)
    return [k for k in kinds if k != "null"], nullable


def kind_of(schema: Mapping[str, Any]) -> str:
    kinds, _ = types_of(schema)
    if isinstance(schema.get("enum"), list):
        return "select"
    if len(kinds) != 1:
        return "json"
    kind = kinds[0]
    if kind in ("integer", "number", "boolean"):
        return kind
    if kind == "string":
        return "text"
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return "object"
    if kind == "array" and isinstance(schema.get("items"), dict):
        item_kinds, _ = types_of(schema["items"])
        if len(item_kinds) == 1 and item_kinds[0] in SIMPLE[:3]:
            return "list"
    return "json"


def ordered(properties: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Properties in ``x-position`` order (those without one after, in schema order)."""
    items = [(k, v) for k, v in properties.items() if isinstance(v, dict)]
    big = len(items) + 10**6

    def position(entry: tuple[int, tuple[str, Mapping[str, Any]]]) -> tuple[float, int]:
        index, (_, sub) = entry
        where = sub.get("x-position")
        number = where if isinstance(where, int | float) and not isinstance(where, bool) else big
        return (number, index)

    return [item for _, item in sorted(enumerate(items), key=position)]


def visible(schema: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return []
    return [(k, v) for k, v in ordered(properties) if v.get("x-hidden") is not True]


def fields(schema: Mapping[str, Any], config: Mapping[str, Any]) -> list[Field]:
    """The form's fields for ``schema``, filled in from ``config`` (or the defaults)."""
    if count(schema) > MAX_FIELDS:
        whole = Field((), "Deployment config", "json", value=_json_text(config))
        whole.description = "This app's config has too many settings for a form: edit it as JSON."
        return [whole]
    return _fields(schema, config, ())


def count(schema: Mapping[str, Any]) -> int:
    total = 0
    for _, sub in visible(schema):
        total += 1 + (count(sub) if kind_of(sub) == "object" else 0)
    return total


def _fields(schema: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> list[Field]:
    required = schema.get("required")
    needed = set(required) if isinstance(required, list) else set()
    found = []
    for key, sub in visible(schema):
        present = key in config
        found.append(make_field((*path, key), sub, config.get(key), present, key in needed))
    return found


def make_field(
    path: Path, schema: Mapping[str, Any], value: Any, present: bool, required: bool
) -> Field:
    _, nullable = types_of(schema)
    title = schema.get("title")
    description = schema.get("description")
    made = Field(
        path,
        title if isinstance(title, str) and title else PLATFORM_LABELS.get(path[-1], path[-1]),
        kind_of(schema),
        description=description if isinstance(description, str) else "",
        required=required,
        nullable=nullable,
        default=schema.get("default"),
    )
    shown = value if present else made.default
    if made.kind == "object":
        made.children = _fields(schema, shown if isinstance(shown, dict) else {}, path)
        return made
    made.attrs = constraints(schema, made.kind)
    if made.kind == "select":
        made.options = [(json.dumps(v), _show(v)) for v in schema["enum"] if v is not None]
        made.value = "" if shown is None else json.dumps(shown)
    elif made.kind == "list":
        made.item_kind = kind_of(schema["items"])
        made.attrs = constraints(schema["items"], made.item_kind)
        made.value = "\n".join(_line(v) for v in shown) if isinstance(shown, list) else ""
    else:
        made.value = _text(made.kind, shown)
    return made


def _line(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _json_text(value: Any) -> str:
    return "" if value is None else json.dumps(value, indent=2)


def _text(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "boolean":
        return "true" if value is True else ""
    if kind == "json":
        return _json_text(value)
    if kind in ("integer", "number") and isinstance(value, int | float):
        return json.dumps(value)
    return value if isinstance(value, str) else json.dumps(value)


def constraints(schema: Mapping[str, Any], kind: str) -> dict[str, str]:
    """The schema's constraints as HTML attributes, so the browser can check them too."""
    attrs: dict[str, str] = {}
    if kind in ("integer", "number"):
        for keyword, attr in (("minimum", "min"), ("maximum", "max")):
            value = schema.get(keyword)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attrs[attr] = json.dumps(value)
        step = schema.get("multipleOf")
        valid_step = isinstance(step, int | float) and not isinstance(step, bool) and step > 0
        attrs["step"] = json.dumps(step) if valid_step else ("1" if kind == "integer" else "any")
    if kind == "text":
        for keyword, attr in (("minLength", "minlength"), ("maxLength", "maxlength")):
            value = schema.get(keyword)
            if isinstance(value, int) and not isinstance(value, bool):
                attrs[attr] = str(value)
    return attrs


def walk(found: Sequence[Field]) -> Iterator[Field]:
    for item in found:
        yield item
        yield from walk(item.children)


# ---------------------------------------------------------------- form → config


class Unreadable(ValueError):
    """A field's text that cannot become a value at all (JSON that does not parse)."""


def read(
    schema: Mapping[str, Any], form: Mapping[str, list[str]], current: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[Path, str]]:
    """The config a submitted form stands for, starting from ``current`` (so what the form
    does not show is kept), and the fields whose text could not be read."""
    config = copy.deepcopy(dict(current))
    problems: dict[Path, str] = {}
    shown = fields(schema, current)
    if len(shown) == 1 and shown[0].path == ():
        return _read_whole(form, problems), problems
    _read_into(config, shown, form, problems)
    return config, problems


def _read_whole(form: Mapping[str, list[str]], problems: dict[Path, str]) -> dict[str, Any]:
    values = form.get("c/") or [""]
    try:
        whole = parse_json(values[-1])
    except Unreadable as exc:
        problems[()] = str(exc)
        return {}
    if not isinstance(whole, dict):
        problems[()] = "the deployment config must be a JSON object"
        return {}
    return whole


def _read_into(
    target: dict[str, Any],
    found: Sequence[Field],
    form: Mapping[str, list[str]],
    problems: dict[Path, str],
) -> None:
    for item in found:
        key = item.path[-1]
        if item.kind == "object":
            inner = target.get(key)
            inner = inner if isinstance(inner, dict) else {}
            _read_into(inner, item.children, form, problems)
            target[key] = inner
            continue
        values = form.get(item.name) or [""]
        try:
            value = convert(item, values[-1])
        except Unreadable as exc:
            problems[item.path] = str(exc)
            continue
        if value is None and not item.nullable:
            target.pop(key, None)
        else:
            target[key] = value


def convert(item: Field, text: str) -> Any:
    """One field's submitted text as a value; None for an empty field. A value of the
    wrong type is returned as it is, for the schema to name the problem."""
    if item.kind == "boolean":
        return text == "true"
    if item.kind == "list":
        return [scalar(item.item_kind, line.strip()) for line in text.splitlines() if line.strip()]
    if item.kind in ("json", "select"):
        return parse_json(text) if text.strip() else None
    if item.kind == "text":
        return text if text != "" else None
    return scalar(item.kind, text.strip()) if text.strip() else None


def scalar(kind: str, text: str) -> Any:
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return _number_or_text(text)
    if kind == "number":
        return _number_or_text(text)
    return text


def _number_or_text(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Unreadable(f"this is not valid JSON: {exc}") from exc


# ---------------------------------------------------------------- problems → fields


def field_errors(schema: Mapping[str, Any], config: Any) -> dict[Path, list[str]]:
    """Every way ``config`` breaks ``schema``, by the path of the value at fault."""
    found: dict[Path, list[str]] = {}
    for error in Draft202012Validator(schema).iter_errors(config):
        for path, message in describe(error):
            found.setdefault(path, []).append(message)
    return found


def describe(error: ValidationError) -> list[tuple[Path, str]]:
    """A schema error as (path, message); a missing required property is the missing
    property's own problem."""
    path = tuple(str(p) for p in error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        wanted = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [k for k in wanted if isinstance(k, str) and k not in error.instance]
        return [((*path, k), "this is required") for k in missing]
    return [(path, error.message)]


def attach(found: Sequence[Field], errors: Mapping[Path, list[str]]) -> list[str]:
    """Give each field the problems at or under its path; returns the rest, as lines."""
    paths = {item.path: item for item in walk(found) if item.kind != "object"}
    rest: list[str] = []
    for path, messages in sorted(errors.items()):
        owner = next((paths[path[:n]] for n in range(len(path), 0, -1) if path[:n] in paths), None)
        if owner is None and () in paths:
            owner = paths[()]
        if owner is None:
            where = ".".join(path) or "the config"
            rest.extend(f"{where}: {m}" for m in messages)
            continue
        where = _inside(owner, path[len(owner.path) :])
        text = "; ".join(where + m for m in messages)
        owner.error = f"{owner.error}; {text}" if owner.error else text
    return rest


def _inside(owner: Field, inner: Path) -> str:
    """Where in a field a problem is: ``line 2: `` of a list, ``key: `` of JSON."""
    if not inner:
        return ""
    if owner.kind == "list" and inner[0].isdigit():
        return f"line {int(inner[0]) + 1}: "
    return ".".join(inner) + ": "
