"""Exponential backoff (1 s, 2 s, 4 s … by default) and stoppable sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``base * 2**attempt`` seconds, at most ``maximum``, give or take ``jitter`` (a
    fraction: 0.1 spreads a fleet's retries over ±10 % so they do not arrive together)."""

    base: float = 1.0
    maximum: float = 60.0
    jitter: float = 0.0

    def delay(self, attempt: int) -> float:
        delay = min(self.base * 2.0 ** min(attempt, 62), self.maximum)
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return delay


async def sleep_unless(event: asyncio.Event | None, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``event`` is set meanwhile; True if it was set."""
    if event is None:
        await asyncio.sleep(seconds)
        return False
    if event.is_set():
        return True
    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
    # arrives as the event is set, and the task would then never stop.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
