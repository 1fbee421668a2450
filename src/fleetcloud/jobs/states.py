"""The job execution state machine, as AWS IoT Jobs defines it (pure).

::

    QUEUED ──► IN_PROGRESS ──► SUCCEEDED | FAILED | REJECTED      (the device)
      │            │   ╰─────► TIMED_OUT                          (the server's timer)
      │            ╰─────────► CANCELED | REMOVED                 (an operator, with force)
      ├──────────────────────► SUCCEEDED | FAILED | REJECTED      (the device)
      ╰──────────────────────► CANCELED | REMOVED                 (an operator)

``IN_PROGRESS → IN_PROGRESS`` is legal too: the device reports progress. The six states on
the right are final; a retry is a new execution (the next ``execution_number``), never a
step back to ``QUEUED``.
"""

from __future__ import annotations

from enum import StrEnum

from fleetcloud.core.errors import BadRequest, Conflict, Forbidden


class ExecutionStatus(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"


class Actor(StrEnum):
    """Who moves an execution: the device itself, the server's timer, or an operator."""

    DEVICE = "device"
    SERVER = "server"
    OPERATOR = "operator"


class JobStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


S = ExecutionStatus
ALL_STATUSES: tuple[ExecutionStatus, ...] = tuple(ExecutionStatus)
ACTIVE = frozenset({S.QUEUED, S.IN_PROGRESS})
TERMINAL = frozenset(ALL_STATUSES) - ACTIVE
DEVICE_SETTABLE = frozenset({S.IN_PROGRESS, S.SUCCEEDED, S.FAILED, S.REJECTED})

_DEVICE_ENDS = {S.SUCCEEDED: Actor.DEVICE, S.FAILED: Actor.DEVICE, S.REJECTED: Actor.DEVICE}

TRANSITIONS: dict[ExecutionStatus, dict[ExecutionStatus, Actor]] = {
    S.QUEUED: {
        S.IN_PROGRESS: Actor.DEVICE,
        **_DEVICE_ENDS,
        S.CANCELED: Actor.OPERATOR,
        S.REMOVED: Actor.OPERATOR,
    },
    S.IN_PROGRESS: {
        S.IN_PROGRESS: Actor.DEVICE,
        **_DEVICE_ENDS,
        S.TIMED_OUT: Actor.SERVER,
        S.CANCELED: Actor.OPERATOR,
        S.REMOVED: Actor.OPERATOR,
    },
}
"""Legal moves: ``TRANSITIONS[from][to]`` is the one actor that may make the move."""


def parse_status(value: object) -> ExecutionStatus:
    if not isinstance(value, str):
        raise BadRequest(f"status must be a string, one of {', '.join(ALL_STATUSES)}")
    try:
        return ExecutionStatus(value.strip().upper())
    except ValueError:
        raise BadRequest(
            f"status {value!r} is not an execution status; use one of {', '.join(ALL_STATUSES)}"
        ) from None


def is_terminal(status: ExecutionStatus) -> bool:
    return status in TERMINAL


def check_transition(current: ExecutionStatus, target: ExecutionStatus, actor: Actor) -> None:
    """Raise unless ``actor`` may move an execution from ``current`` to ``target``.

    403 when this kind of caller may never set ``target``; 409 when the move is
    impossible from the execution's current state.
    """
    if actor is Actor.DEVICE and target not in DEVICE_SETTABLE:
        allowed = ", ".join(sorted(DEVICE_SETTABLE))
        raise Forbidden(f"a device may set only {allowed}; {target} is set by the server")
    owner = TRANSITIONS.get(current, {}).get(target)
    if owner is actor:
        return
    if is_terminal(current):
        raise Conflict(f"the execution is already {current}, which is final; {target} is refused")
    if owner is None:
        raise Conflict(f"an execution cannot move from {current} to {target}")
    raise Forbidden(f"only the {owner.value} may move an execution from {current} to {target}")
