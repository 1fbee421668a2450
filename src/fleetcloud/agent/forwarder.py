"""The forwarder: sends the queue's messages to the cloud's data API, oldest first.

Batches go through ``POST /api/agents/messages`` with each message's id, so a batch sent
twice (the agent died between sending and noting it) is stored once. Aggregate patches
that device apps queued go through ``PATCH /api/agents/aggregates``; a batch holds one
kind only, so messages and patches reach the cloud in the order they were queued. While the cloud is
unreachable the forwarder waits with exponential backoff (and jitter, so a fleet coming
back does not arrive at once) and the queue keeps everything on disk. A message the
cloud refuses for good (400, 409, 413 or 422 for that item, e.g. it breaks the channel's
schema) is set aside in the queue's ``rejected`` table instead of blocking the ones behind
it; one refused for who sent it (401, 403, 404: a wrong key or device id) stays queued.
"""

from __future__ import annotations

import asyncio
import logging

from fleetcloud.agent.backoff import Backoff, sleep_unless
from fleetcloud.agent.cloud import DataClient
from fleetcloud.agent.errors import CloudRefused, CloudUnreachable
from fleetcloud.agent.queue import PATCH, MessageQueue, QueuedMessage

log = logging.getLogger("fleetcloud.agent.Forwarder")


REFUSED_FOR_GOOD = (400, 409, 413, 422)  # the message itself is wrong; 401/403/404 are not


def refused_for_good(result: dict[str, object]) -> bool:
    """Whether an item failed because of what it holds (set it aside), not because of
    whom it was sent as (a wrong key or device id: keep it until that is fixed)."""
    return result.get("status") in REFUSED_FOR_GOOD


def same_kind(batch: list[QueuedMessage]) -> list[QueuedMessage]:
    """The leading run of ``batch`` with one kind of write (messages and aggregate patches
    go to different batch endpoints; taking only the run keeps the queue's order)."""
    for index, write in enumerate(batch):
        if write.kind != batch[0].kind:
            return batch[:index]
    return batch


class Forwarder:
    def __init__(
        self,
        queue: MessageQueue,
        client: DataClient,
        agent_id: str,
        *,
        backoff: Backoff | None = None,
        batch_size: int = 100,
        batch_bytes: int = 256 * 1024,
    ) -> None:
        self.queue = queue
        self.client = client
        self.agent_id = agent_id
        self.backoff = backoff or Backoff(jitter=0.1)
        self.batch_size = self.max_batch = batch_size
        self.batch_bytes = batch_bytes
        self.forwarded = 0
        self.reachable = True

    async def run(self, stop: asyncio.Event) -> None:
        """Forward until ``stop`` is set; never raises for the cloud's sake."""
        attempt = 0
        while not stop.is_set():
            try:
                sent = await self.forward_once()
            except (CloudUnreachable, CloudRefused) as exc:
                delay = self.backoff.delay(attempt)
                attempt += 1
                self._unreachable(exc, delay)
                await sleep_unless(stop, delay)
                continue
            attempt = 0
            self._reachable()
            if sent == 0:
                await self._wait_for_messages(stop)

    async def drain(self) -> int:
        """Forward until the queue is empty; raises if the cloud cannot take them."""
        total = 0
        while sent := await self.forward_once():
            total += sent
        return total

    async def forward_once(self) -> int:
        """Send one batch; returns how many messages left the queue (0: it is empty)."""
        self.queue.added.clear()
        batch = same_kind(await self.queue.peek(self.batch_size, self.batch_bytes))
        if not batch:
            return 0
        send = self.client.patch_batch if batch[0].kind == PATCH else self.client.publish_batch
        try:
            results = await send([m.item(self.agent_id) for m in batch])
        except CloudRefused as exc:
            if exc.status != 413:
                raise
            return await self._too_large(batch, exc)
        done: list[QueuedMessage] = []
        refused: dict[int, str] = {}
        for message, result in zip(batch, results, strict=True):
            if result.get("success"):
                done.append(message)
            elif refused_for_good(result):
                done.append(message)
                refused[message.seq] = str(result.get("error") or "refused")
                log.warning(
                    "The cloud refused a message; it is set aside: %s",
                    refused[message.seq],
                    extra={"channel": message.channel, "messageId": str(message.message_id)},
                )
        await self.queue.reject(refused, done)
        self.forwarded += len(done) - len(refused)
        self.batch_size = self.max_batch
        if not done:
            raise CloudUnreachable("the cloud could not store any message of the batch")
        return len(done)

    async def _too_large(self, batch: list[QueuedMessage], exc: CloudRefused) -> int:
        if len(batch) > 1:
            self.batch_size = max(1, len(batch) // 2)
            return await self.forward_once()
        await self.queue.reject({batch[0].seq: exc.message}, batch)
        log.warning("The cloud refused a message as too large; it is set aside")
        return 1

    async def _wait_for_messages(self, stop: asyncio.Event) -> None:
        added = asyncio.ensure_future(self.queue.added.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({added, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (added, stopped):
                waiter.cancel()
            await asyncio.gather(added, stopped, return_exceptions=True)

    def _unreachable(self, exc: CloudUnreachable | CloudRefused, delay: float) -> None:
        if isinstance(exc, CloudRefused):
            log.error("The cloud refused forwarded messages (HTTP %s): %s", exc.status, exc.message)
        elif self.reachable:
            log.warning(
                "Cloud unreachable; messages stay queued on disk: %s",
                exc.message,
                extra={"pending": self.queue.count},
            )
        else:
            log.debug("Cloud still unreachable, retrying in %.1f s", delay)
        self.reachable = False

    def _reachable(self) -> None:
        if not self.reachable:
            log.info("Cloud reachable again", extra={"pending": self.queue.count})
        self.reachable = True
