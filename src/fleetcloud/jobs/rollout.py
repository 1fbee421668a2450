"""Rollout rate, abort criteria and retries: decisions from counts (pure).

- **Rate**: with ``maximum_per_minute`` N, at most N executions are queued in any
  one-minute window; the window opens with the first release and a new one opens a
  minute later. Without it, every target is queued at once.
- **Abort**: a criterion ``(failure_type, threshold_percentage, min_finished)`` fires
  when at least ``min_finished`` executions have finished (SUCCEEDED, FAILED, REJECTED or
  TIMED_OUT) and *more than* ``threshold_percentage`` % of them ended in
  ``failure_type`` (``ALL`` = FAILED, REJECTED and TIMED_OUT).
- **Retry**: a criterion ``(failure_type, number_of_retries)`` queues a new attempt for an
  execution that ended in ``failure_type`` (``ALL`` = FAILED and TIMED_OUT) as long as
  fewer than ``number_of_retries`` earlier attempts of that device ended that way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetcloud.jobs.model import AbortCriterion, RetryCriterion
from fleetcloud.jobs.states import ExecutionStatus

S = ExecutionStatus
WINDOW_MS = 60_000
FINISHED = (S.SUCCEEDED, S.FAILED, S.REJECTED, S.TIMED_OUT)
ABORT_TYPES: dict[str, frozenset[ExecutionStatus]] = {
    "FAILED": frozenset({S.FAILED}),
    "REJECTED": frozenset({S.REJECTED}),
    "TIMED_OUT": frozenset({S.TIMED_OUT}),
    "ALL": frozenset({S.FAILED, S.REJECTED, S.TIMED_OUT}),
}
RETRY_TYPES: dict[str, frozenset[ExecutionStatus]] = {
    "FAILED": frozenset({S.FAILED}),
    "TIMED_OUT": frozenset({S.TIMED_OUT}),
    "ALL": frozenset({S.FAILED, S.TIMED_OUT}),
}
MAX_RETRIES = 10


def release_allowance(
    now_ms: int, window_start_ms: int, window_count: int, maximum_per_minute: int | None
) -> tuple[int, int, int | None]:
    """``(window_start_ms, window_count, allowed)`` for a release at ``now_ms``;
    ``allowed`` is None when there is no limit."""
    if maximum_per_minute is None:
        return window_start_ms, window_count, None
    if window_start_ms == 0 or now_ms - window_start_ms >= WINDOW_MS:
        window_start_ms, window_count = now_ms, 0
    return window_start_ms, window_count, max(maximum_per_minute - window_count, 0)


def abort_reason(criteria: Sequence[AbortCriterion], counts: Mapping[str, int]) -> str | None:
    """Why the job must abort now, or None."""
    finished = sum(counts.get(status.value, 0) for status in FINISHED)
    for criterion in criteria:
        if finished < criterion.min_finished or finished == 0:
            continue
        failed = sum(counts.get(s.value, 0) for s in ABORT_TYPES[criterion.failure_type])
        if failed * 100 > criterion.threshold_percentage * finished:
            share = round(failed * 100 / finished, 1)
            return (
                f"aborted: {failed} of {finished} finished executions ({share}%) ended "
                f"{criterion.failure_type}, over the {criterion.threshold_percentage}% threshold"
            )
    return None


def should_retry(criteria: Sequence[RetryCriterion], attempts: Sequence[ExecutionStatus]) -> bool:
    """Whether a device's execution deserves another attempt; ``attempts`` are the
    statuses of all its attempts so far, the one that just ended last."""
    if not attempts:
        return False
    last = attempts[-1]
    for criterion in criteria:
        covered = RETRY_TYPES[criterion.failure_type]
        if last in covered and sum(s in covered for s in attempts) <= criterion.number_of_retries:
            return True
    return False
