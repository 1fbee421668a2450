"""Job templates: the built-in ones, parameter specs, and rendering a template (pure).

A template is a job document with parameters. ``render`` checks the values an operator
gives against the template's specs (required, ``regex``, defaults) and substitutes them.
Values are inserted verbatim, so a template that builds an argv constrains its
parameters with a ``regex`` (``restart-service`` allows no comma in a service name).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fleetcloud.jobs.documents import (
    InvalidDocument,
    placeholders,
    substitute,
    validate_document,
)
from fleetcloud.jobs.model import ParameterSpec, Template

KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
SPEC_KEYS = {"key", "description", "regex", "optional", "default", "example"}
MAX_VALUE = 4096


def _command(name: str, command: str, **extra: Any) -> dict[str, Any]:
    return {"action": {"name": name, "type": "runCommand", "input": {"command": command}, **extra}}


def _param(name: str) -> str:
    return "${aws:iot:parameter:" + name + "}"


BUILTINS: tuple[Template, ...] = (
    Template(
        1,
        "run-command",
        "Run one command. command is a comma-separated argv (\\, for a literal comma).",
        {
            "version": "1.0",
            "includeStdOut": True,
            "steps": [_command("run-command", _param("command"))],
        },
        (ParameterSpec("command", "comma-separated argv, e.g. docker,restart,redis"),),
        timeout_seconds=600,
    ),
    Template(
        2,
        "restart-service",
        "Restart a systemd service and check that it is active again.",
        {
            "version": "1.0",
            "includeStdOut": True,
            "steps": [
                _command("restart", "systemctl,restart," + _param("service")),
                _command("check", "systemctl,is-active," + _param("service")),
            ],
        },
        (
            ParameterSpec(
                "service", "the systemd unit", regex=r"[A-Za-z0-9@._:-]{1,128}", example="nginx"
            ),
        ),
        timeout_seconds=120,
    ),
    Template(
        3,
        "health-check",
        "Report uptime and load, disk and memory use.",
        {
            "version": "1.0",
            "includeStdOut": True,
            "steps": [
                _command("uptime", "uptime"),
                _command("disk", "df,-h"),
                _command("memory", "free,-m", ignoreStepFailure=True),
            ],
        },
        (),
        timeout_seconds=60,
    ),
    Template(
        4,
        "reboot",
        "Schedule a reboot in delay_minutes (default 1), so the result is reported first.",
        {
            "version": "1.0",
            "steps": [_command("reboot", "shutdown,-r,+" + _param("delay_minutes"))],
        },
        (
            ParameterSpec(
                "delay_minutes",
                "minutes before the reboot",
                regex=r"[0-9]{1,4}",
                optional=True,
                default="1",
            ),
        ),
        timeout_seconds=120,
    ),
)
BUILTIN_BY_ID = {t.id: t for t in BUILTINS}
BUILTIN_BY_NAME = {t.name: t for t in BUILTINS}


def parse_parameter_specs(value: Any, where: str = "parameters") -> tuple[ParameterSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidDocument(f"{where} must be a list of {{'key', 'description'?, …}} objects")
    specs = tuple(_spec(item, f"{where}[{i}]") for i, item in enumerate(value))
    keys = [spec.key for spec in specs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise InvalidDocument(f"{where} declares {duplicates[0]!r} more than once")
    return specs


def _spec(item: Any, where: str) -> ParameterSpec:
    if not isinstance(item, dict):
        raise InvalidDocument(f"{where} must be an object with a 'key'")
    unknown = sorted(set(item) - SPEC_KEYS)
    if unknown:
        raise InvalidDocument(f"{where} has unknown field {unknown[0]!r}")
    key = item.get("key")
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise InvalidDocument(f"{where}.key must be 1-128 letters, digits, '_' or '-'")
    texts = {name: item.get(name) for name in ("description", "regex", "default", "example")}
    for name, text in texts.items():
        if text is not None and not isinstance(text, str):
            raise InvalidDocument(f"{where}.{name} must be a string")
    optional = item.get("optional", False)
    if not isinstance(optional, bool):
        raise InvalidDocument(f"{where}.optional must be true or false")
    spec = ParameterSpec(
        key,
        texts["description"] or "",
        texts["regex"],
        optional,
        texts["default"],
        texts["example"],
    )
    _check_regex(spec, where)
    if spec.default is not None:
        _check_value(spec, spec.default, f"{where}.default")
    return spec


def _check_regex(spec: ParameterSpec, where: str) -> None:
    if spec.regex is None:
        return
    try:
        re.compile(spec.regex)
    except re.error as exc:
        raise InvalidDocument(f"{where}.regex is not a valid regular expression: {exc}") from exc


def _check_value(spec: ParameterSpec, value: str, where: str) -> None:
    if len(value) > MAX_VALUE:
        raise InvalidDocument(f"{where} is longer than {MAX_VALUE} characters")
    if spec.regex is not None and not re.fullmatch(spec.regex, value):
        raise InvalidDocument(
            f"{where} {value!r} does not match the parameter's pattern {spec.regex!r}"
        )


def check_template(document: Any, specs: Sequence[ParameterSpec]) -> dict[str, Any]:
    """Validate a template's document against its declared parameters."""
    checked = validate_document(document)
    used = placeholders(checked)
    declared = {spec.key for spec in specs}
    undeclared, unused = sorted(used - declared), sorted(declared - used)
    if undeclared:
        raise InvalidDocument(
            f"job_document uses parameter {undeclared[0]!r}, which parameters does not declare"
        )
    if unused:
        raise InvalidDocument(f"parameter {unused[0]!r} is declared but job_document never uses it")
    return checked


def resolve_parameters(specs: Sequence[ParameterSpec], given: Any) -> dict[str, str]:
    """The value of every parameter: given, else its default, else refused."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise InvalidDocument("parameters must be an object of name → value")
    declared = {spec.key: spec for spec in specs}
    unknown = sorted(set(given) - declared.keys())
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise InvalidDocument(f"unknown parameter {unknown[0]!r}; this template takes: {known}")
    values: dict[str, str] = {}
    for spec in specs:
        values[spec.key] = _value(spec, given.get(spec.key))
    return values


def _value(spec: ParameterSpec, raw: Any) -> str:
    where = f"parameter {spec.key!r}"
    if raw is None:
        if spec.default is not None:
            return spec.default
        if spec.optional:
            return ""
        raise InvalidDocument(f"{where} is required: {spec.description or 'give a value'}")
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise InvalidDocument(f"{where} must be a string (or a number)")
    value = str(raw)
    _check_value(spec, value, where)
    return value


def render(template: Template, given: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The job document for ``template`` with ``given`` parameters, and the values used."""
    values = resolve_parameters(template.parameters, given)
    document = substitute(template.document, values)
    return validate_document(document), values
