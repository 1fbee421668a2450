"""The execution state machine: every legal move, and every illegal one refused (pure)."""

from __future__ import annotations

import itertools

import pytest

from fleetcloud.core.errors import ApiError, BadRequest
from fleetcloud.jobs.states import (
    DEVICE_SETTABLE,
    TERMINAL,
    Actor,
    ExecutionStatus,
    check_transition,
    parse_status,
)

S = ExecutionStatus
D, SERVER, OP = Actor.DEVICE, Actor.SERVER, Actor.OPERATOR

# Written out by hand from AWS IoT Jobs' execution lifecycle, not derived from the code.
LEGAL = {
    (S.QUEUED, S.IN_PROGRESS, D),
    (S.QUEUED, S.SUCCEEDED, D),
    (S.QUEUED, S.FAILED, D),
    (S.QUEUED, S.REJECTED, D),
    (S.QUEUED, S.CANCELED, OP),
    (S.QUEUED, S.REMOVED, OP),
    (S.IN_PROGRESS, S.IN_PROGRESS, D),
    (S.IN_PROGRESS, S.SUCCEEDED, D),
    (S.IN_PROGRESS, S.FAILED, D),
    (S.IN_PROGRESS, S.REJECTED, D),
    (S.IN_PROGRESS, S.TIMED_OUT, SERVER),
    (S.IN_PROGRESS, S.CANCELED, OP),
    (S.IN_PROGRESS, S.REMOVED, OP),
}
EVERY_MOVE = list(itertools.product(list(S), list(S), list(Actor)))


def test_the_eight_aws_states() -> None:
    assert [s.value for s in S] == [
        "QUEUED",
        "IN_PROGRESS",
        "SUCCEEDED",
        "FAILED",
        "TIMED_OUT",
        "REJECTED",
        "REMOVED",
        "CANCELED",
    ]
    assert {s.value for s in TERMINAL} == {
        "SUCCEEDED",
        "FAILED",
        "TIMED_OUT",
        "REJECTED",
        "REMOVED",
        "CANCELED",
    }
    assert {s.value for s in DEVICE_SETTABLE} == {"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"}


@pytest.mark.parametrize(("current", "target", "actor"), sorted(LEGAL))
def test_legal_move(current: S, target: S, actor: Actor) -> None:
    check_transition(current, target, actor)


ILLEGAL = [move for move in EVERY_MOVE if move not in LEGAL]


@pytest.mark.parametrize(("current", "target", "actor"), ILLEGAL)
def test_illegal_move_is_refused(current: S, target: S, actor: Actor) -> None:
    with pytest.raises(ApiError) as caught:
        check_transition(current, target, actor)
    error = caught.value
    if actor is D and target not in DEVICE_SETTABLE:
        assert error.status == 403
        assert "a device may set only FAILED, IN_PROGRESS, REJECTED, SUCCEEDED" in error.message
    elif current in TERMINAL:
        assert error.status == 409
        assert f"already {current}, which is final" in error.message
    elif not any((current, target, who) in LEGAL for who in Actor):
        assert error.status == 409
        assert f"cannot move from {current} to {target}" in error.message
    else:
        assert error.status == 403
        assert "only the" in error.message


def test_a_device_can_never_set_the_servers_or_operators_states() -> None:
    for target in (S.TIMED_OUT, S.CANCELED, S.REMOVED, S.QUEUED):
        with pytest.raises(ApiError) as caught:
            check_transition(S.IN_PROGRESS, target, D)
        assert caught.value.status == 403


@pytest.mark.parametrize(
    ("raw", "status"), [("SUCCEEDED", S.SUCCEEDED), (" in_progress ", S.IN_PROGRESS)]
)
def test_parse_status(raw: str, status: S) -> None:
    assert parse_status(raw) is status


@pytest.mark.parametrize("raw", ["SUCCESS", "", None, 1])
def test_parse_status_refuses_unknown(raw: object) -> None:
    with pytest.raises(BadRequest, match="QUEUED, IN_PROGRESS, SUCCEEDED"):
        parse_status(raw)
