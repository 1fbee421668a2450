"""Job documents: parsing and checking, from values to values (no I/O).

A document (seed 003, AWS IoT Jobs' "standard job action document")::

    {"version": "1.0", "includeStdOut": true, "parallel": false,
     "steps": [{"action": {"name": "…", "type": "runCommand" | "runHandler",
                           "input": {...}, "runAsUser"?: "…",
                           "allowStdErr"?: int | bool, "ignoreStepFailure"?: bool}}],
     "finalStep"?: {"action": {...}}}

``runCommand`` takes ``input.command``: a list of arguments, or one string of
comma-separated arguments where ``\\,`` is a literal comma (AWS's convention; no shell
is involved). ``runHandler`` takes ``input.handler`` (a file name in
the agent's handler directory) and ``input.args`` (a list, or a comma-separated string).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetcloud.agent.errors import InvalidJobDocument

SUPPORTED_VERSIONS = ("1.0",)
RUN_COMMAND = "runCommand"
RUN_HANDLER = "runHandler"


@dataclass(frozen=True)
class Action:
    """One step: what to run, as whom, and how to judge it."""

    name: str
    type: str
    argv: tuple[str, ...]  # runCommand: the command; runHandler: the handler's args
    handler: str | None = None
    run_as_user: str | None = None
    allow_stderr: int | None = None  # lines of stderr allowed; None: any amount
    ignore_failure: bool = False


@dataclass(frozen=True)
class JobDocument:
    steps: tuple[Action, ...]
    final_step: Action | None = None
    include_stdout: bool = False
    parallel: bool = False


def split_command(command: str) -> list[str]:
    """``"a,b\\,c,d"`` → ``["a", "b,c", "d"]``: AWS's comma-separated argv (``\\,`` is a
    comma; any other backslash is itself). The server's ``jobs.documents`` splits the same
    way, and a test holds the two together."""
    args: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(command):
        char = command[index]
        if char == "\\" and command[index + 1 : index + 2] == ",":
            current.append(",")
            index += 2
            continue
        if char == ",":
            args.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    args.append("".join(current))
    return args


def parse_document(raw: Any) -> JobDocument:
    """Check ``raw`` and return the document, or raise ``InvalidJobDocument`` saying why."""
    if not isinstance(raw, dict):
        raise InvalidJobDocument("the job document must be a JSON object")
    version = raw.get("version")
    if version is not None and str(version) not in SUPPORTED_VERSIONS:
        raise InvalidJobDocument(
            f"job document version {version!r} is not supported (this agent runs "
            f"{', '.join(SUPPORTED_VERSIONS)})"
        )
    steps = raw.get("steps")
    if not isinstance(steps, list) or not steps:
        raise InvalidJobDocument("the job document needs a non-empty list of steps")
    parsed = tuple(parse_step(step, f"steps[{index}]") for index, step in enumerate(steps))
    final = raw.get("finalStep")
    return JobDocument(
        steps=parsed,
        final_step=None if final is None else parse_step(final, "finalStep"),
        include_stdout=flag(raw.get("includeStdOut"), "includeStdOut", default=False),
        parallel=flag(raw.get("parallel"), "parallel", default=False),
    )


def parse_step(raw: Any, where: str) -> Action:
    if not isinstance(raw, dict) or not isinstance(raw.get("action"), dict):
        raise InvalidJobDocument(f'{where} must be {{"action": {{...}}}}')
    action = raw["action"]
    kind = action.get("type")
    name = action.get("name")
    name = str(name) if name else where
    inputs = action.get("input") or {}
    if not isinstance(inputs, dict):
        raise InvalidJobDocument(f"{where}.action.input must be an object")
    user = action.get("runAsUser")
    if user is not None and (not isinstance(user, str) or not user):
        raise InvalidJobDocument(f"{where}.action.runAsUser must be a user name")
    common: dict[str, Any] = {
        "name": name,
        "type": kind,
        "run_as_user": user or None,
        "allow_stderr": allow_stderr(action.get("allowStdErr"), where),
        "ignore_failure": flag(
            action.get("ignoreStepFailure"), f"{where}.action.ignoreStepFailure", default=False
        ),
    }
    if kind == RUN_COMMAND:
        return Action(argv=command_argv(inputs.get("command"), where), **common)
    if kind == RUN_HANDLER:
        handler = inputs.get("handler")
        if not isinstance(handler, str) or not handler:
            raise InvalidJobDocument(f"{where}.action.input.handler must name a handler")
        args = inputs.get("args", [])
        argv = tuple(split_command(args)) if isinstance(args, str) and args else None
        return Action(argv=argv or string_list(args or [], where), handler=handler, **common)
    raise InvalidJobDocument(
        f"{where}.action.type must be {RUN_COMMAND!r} or {RUN_HANDLER!r}, not {kind!r}"
    )


def command_argv(command: Any, where: str) -> tuple[str, ...]:
    if isinstance(command, str):
        argv = split_command(command)
    elif isinstance(command, list):
        argv = list(string_list(command, where))
    else:
        raise InvalidJobDocument(
            f"{where}.action.input.command must be a comma-separated string or a list"
        )
    if not argv or not argv[0]:
        raise InvalidJobDocument(f"{where}.action.input.command is empty")
    return tuple(argv)


def string_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise InvalidJobDocument(f"{where}: arguments must be a list of strings")
    return tuple(str(v) for v in value)


def flag(value: Any, where: str, *, default: bool) -> bool:
    """A boolean, also given as the strings "true"/"false" (AWS writes them so)."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidJobDocument(f"{where} must be true or false, not {value!r}")


def allow_stderr(value: Any, where: str) -> int | None:
    """``allowStdErr``: lines of stderr a step may write and still succeed.

    A number (AWS's meaning), ``true`` (any amount) or ``false`` (none). Absent: any
    amount, so only the exit code decides.
    """
    if value is None or value is True:
        return None
    if value is False:
        return 0
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InvalidJobDocument(
        f"{where}.action.allowStdErr must be a number of lines or true/false, not {value!r}"
    )
