"""Job documents: validation, parsing into steps, argv splitting, parameters (pure).

A document::

    {"version": "1.0", "includeStdOut": true, "parallel": false,
     "steps": [{"action": {"name": "restart", "type": "runCommand",
                           "input": {"command": "systemctl,restart,nginx"},
                           "runAsUser": "root", "allowStdErr": false,
                           "ignoreStepFailure": false}}],
     "finalStep": {"action": {...}}}

``runCommand`` takes ``command``: a comma-separated argv as in AWS's convention (``\\,`` is
a literal comma; no shell is involved) or a list of strings. ``runHandler`` takes
``handler`` (a file name in the agent's handler directory) and optional ``args`` (a list).
Steps run in order and stop at the first failure unless the step says
``ignoreStepFailure``; with ``"parallel": true`` they run at once. ``finalStep`` always
runs last. ``allowStdErr`` is a number of stderr lines a step may write and still
succeed, or true (any) / false (none). Flags may also be the strings "true"/"false", as
AWS writes them. Strings may hold template parameters written ``${aws:iot:parameter:NAME}``.

The device agent (``fleetcloud.agent.document``) reads documents with the same rules;
this module is the gate at ``execute``, so it is the stricter of the two (unknown fields
and a missing ``version`` are refused here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetcloud.core import jsonish
from fleetcloud.core.errors import BadRequest

VERSION = "1.0"
MAX_DOCUMENT_BYTES = 32 * 1024
MAX_STEPS = 64
RUN_COMMAND = "runCommand"
RUN_HANDLER = "runHandler"
PARAMETER = re.compile(r"\$\{aws:iot:parameter:([A-Za-z0-9_-]{1,128})\}")
HANDLER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

DOCUMENT_KEYS = {"version", "includeStdOut", "steps", "finalStep", "parallel"}
STEP_KEYS = {"action"}
ACTION_KEYS = {"name", "type", "input", "runAsUser", "allowStdErr", "ignoreStepFailure"}
INPUT_KEYS = {RUN_COMMAND: {"command"}, RUN_HANDLER: {"handler", "args"}}


class InvalidDocument(BadRequest):
    """A job document that cannot run; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    type: str
    argv: tuple[str, ...] = ()  # runCommand
    handler: str | None = None  # runHandler
    args: tuple[str, ...] = ()  # runHandler
    run_as_user: str | None = None
    allow_stderr: int | None = None  # lines of stderr allowed; None: any amount
    ignore_failure: bool = False


@dataclass(frozen=True, slots=True)
class JobDocument:
    version: str
    steps: tuple[Step, ...]
    final_step: Step | None = None
    include_stdout: bool = False
    parallel: bool = False


# ---------------------------------------------------------------- argv


def parse_argv(command: Any, where: str = "command") -> list[str]:
    """Split AWS's comma-separated argv: ``"echo,a\\,b"`` → ``["echo", "a,b"]``.

    A list is taken as the argv itself. The program (first element) may not be empty.
    """
    if isinstance(command, str):
        argv = split_commas(command)
    elif isinstance(command, list) and all(_is_arg(a) for a in command):
        argv = [str(a) for a in command]
    else:
        raise InvalidDocument(f"{where} must be a string or a list of strings")
    if not argv or not argv[0].strip():
        raise InvalidDocument(f"{where} names no program to run")
    return argv


def split_commas(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        following = text[index + 1] if index + 1 < len(text) else ""
        if char == "\\" and following == ",":
            current.append(following)
            index += 2
            continue
        if char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def join_argv(argv: Sequence[str]) -> str:
    """The inverse of ``split_commas``: one comma-separated string."""
    return ",".join(a.replace(",", "\\,") for a in argv)


# ---------------------------------------------------------------- validation


def parse_document(document: Any, where: str = "job_document") -> JobDocument:
    """Validate ``document`` and return its steps; raise ``InvalidDocument`` saying why."""
    body = _object(document, where)
    if len(jsonish.dumps(body)) > MAX_DOCUMENT_BYTES:
        raise InvalidDocument(f"{where} is larger than {MAX_DOCUMENT_BYTES} bytes")
    _known_keys(body, DOCUMENT_KEYS, where)
    version = body.get("version")
    if version != VERSION:
        raise InvalidDocument(f'{where}.version must be "{VERSION}", not {version!r}')
    steps = body.get("steps")
    if not isinstance(steps, list) or not steps:
        raise InvalidDocument(f"{where}.steps must be a non-empty list of steps")
    if len(steps) > MAX_STEPS:
        raise InvalidDocument(f"{where}.steps has {len(steps)} steps; at most {MAX_STEPS}")
    parsed = tuple(
        parse_step(step, f"{where}.steps[{i}]", f"step-{i + 1}") for i, step in enumerate(steps)
    )
    final = body.get("finalStep")
    return JobDocument(
        version=VERSION,
        steps=parsed,
        final_step=None if final is None else parse_step(final, f"{where}.finalStep", "final"),
        include_stdout=_flag(body, "includeStdOut", where),
        parallel=_flag(body, "parallel", where),
    )


def validate_document(document: Any, where: str = "job_document") -> dict[str, Any]:
    """``document`` itself, once ``parse_document`` accepts it."""
    parse_document(document, where)
    result: dict[str, Any] = document
    return result


def parse_step(step: Any, where: str, default_name: str) -> Step:
    body = _object(step, where)
    _known_keys(body, STEP_KEYS, where)
    action = _object(body.get("action"), f"{where}.action")
    where = f"{where}.action"
    _known_keys(action, ACTION_KEYS, where)
    kind = action.get("type")
    if kind not in INPUT_KEYS:
        raise InvalidDocument(
            f"{where}.type must be {RUN_COMMAND!r} or {RUN_HANDLER!r}, not {kind!r}"
        )
    name = action.get("name", default_name)
    if not isinstance(name, str) or not name.strip() or len(name) > 128:
        raise InvalidDocument(f"{where}.name must be a non-empty string of at most 128 characters")
    user = action.get("runAsUser")
    if user is not None and (not isinstance(user, str) or not user.strip()):
        raise InvalidDocument(f"{where}.runAsUser must be a user name")
    given = _object(action.get("input"), f"{where}.input")
    _known_keys(given, INPUT_KEYS[kind], f"{where}.input")
    argv: tuple[str, ...] = ()
    handler: str | None = None
    args: tuple[str, ...] = ()
    if kind == RUN_COMMAND:
        argv = tuple(_command(given, f"{where}.input"))
    else:
        handler, args = _handler(given, f"{where}.input")
    return Step(
        name=name,
        type=kind,
        argv=argv,
        handler=handler,
        args=args,
        run_as_user=user,
        allow_stderr=_allow_stderr(action.get("allowStdErr"), f"{where}.allowStdErr"),
        ignore_failure=_flag(action, "ignoreStepFailure", where),
    )


def _command(given: dict[str, Any], where: str) -> list[str]:
    if "command" not in given:
        raise InvalidDocument(f"{where}.command is missing: give the command to run")
    return parse_argv(given["command"], f"{where}.command")


def _handler(given: dict[str, Any], where: str) -> tuple[str, tuple[str, ...]]:
    handler = given.get("handler")
    if not isinstance(handler, str) or not HANDLER_NAME.fullmatch(handler):
        raise InvalidDocument(
            f"{where}.handler must be a file name in the agent's handler directory "
            f"(letters, digits, '.', '_', '-'; no '/'), not {handler!r}"
        )
    raw = given.get("args", [])
    if not isinstance(raw, list) or not all(_is_arg(a) for a in raw):
        raise InvalidDocument(f"{where}.args must be a list of strings")
    return handler, tuple(str(a) for a in raw)


def _is_arg(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _allow_stderr(value: Any, where: str) -> int | None:
    if value is None or value is True:
        return None
    if value is False:
        return 0
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    raise InvalidDocument(f"{where} must be a number of lines or true/false, not {value!r}")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidDocument(f"{where} must be a JSON object")
    return value


def _known_keys(body: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidDocument(
            f"{where} has unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )


def _flag(body: dict[str, Any], key: str, where: str) -> bool:
    value = body.get(key, False)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise InvalidDocument(f"{where}.{key} must be true or false, not {value!r}")
    return value


# ---------------------------------------------------------------- parameters


def placeholders(document: Any) -> set[str]:
    """The parameter names ``document`` uses (``${aws:iot:parameter:NAME}``)."""
    found: set[str] = set()
    for text in _strings(document):
        found.update(PARAMETER.findall(text))
    return found


def substitute(document: Any, values: Mapping[str, str]) -> Any:
    """A copy of ``document`` with every placeholder replaced by its value."""
    if isinstance(document, str):
        return PARAMETER.sub(lambda match: _value(values, match.group(1)), document)
    if isinstance(document, list):
        return [substitute(item, values) for item in document]
    if isinstance(document, dict):
        return {key: substitute(item, values) for key, item in document.items()}
    return document


def _value(values: Mapping[str, str], name: str) -> str:
    if name not in values:
        raise InvalidDocument(f"the document uses parameter {name!r}, which has no value")
    return values[name]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    return []
