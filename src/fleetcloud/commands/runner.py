"""Runs parser scripts in a small pool of warm child processes, with a time limit.

Parser scripts are code that fleetcloud does not control, so they never run in the
server process nor on its event loop: calls go to one of ``workers`` child processes
(``commands/worker.py``) over a pipe. Each child has a task (in the runner's
``TaskGroup``) that takes the calls waiting — up to ``BATCH`` at once, one frame — and
answers them. A script that raises, returns the wrong thing or runs past ``time_limit``
fails its call with a ``ParserError`` saying why. A child that hangs past the limits of
its batch or dies (a segfault, the memory cap) is killed and replaced; the calls of that
batch are then run again one at a time, so only the culprit fails. The answer from a
child is JSON plus raw bytes — never unpickled.

The scripts fleetcloud ships (origin ``"builtin"``) are its own code, not a user's: they
run here, in the calling process, checked the same way but with no round trip (and no
time limit: their work is a pass over their input). An uplink larger than
``IN_PROCESS_BYTES`` still goes to a worker, so a huge payload cannot hold up the event
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson

from fleetcloud.commands.scripts import Script
from fleetcloud.commands.worker import HEADER, Worker, encode_frame
from fleetcloud.core.errors import FleetError

log = logging.getLogger("fleetcloud.commands.runner")

GRACE = 1.0  # seconds past a batch's time limits before its worker is killed
START_TIMEOUT = 30.0
BATCH = 64  # calls per frame at most
IN_PROCESS_BYTES = 64 * 1024  # a shipped script's uplink above this goes to a worker


class ParserError(FleetError):
    """A parser call failed; ``message`` is the reason a command fails with."""


@dataclass(slots=True)
class _Call:
    script: Script
    request: dict[str, Any]
    blob: bytes
    future: asyncio.Future[tuple[dict[str, Any], bytes]]
    alone: bool = False  # run in a batch of its own (after its batch's worker died)


@dataclass(eq=False)
class _Child:
    """One worker process and the scripts it has loaded."""

    process: asyncio.subprocess.Process
    loaded: set[str] = field(default_factory=set)

    @classmethod
    async def spawn(cls, memory_mb: int) -> _Child:
        env = {**os.environ, "FLEETCLOUD_PARSER_MEMORY_MB": str(memory_mb)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fleetcloud.commands.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(process)

    async def exchange(self, header: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        stdin, stdout = self.process.stdin, self.process.stdout
        if stdin is None or stdout is None:
            raise ConnectionError("the worker has no pipes")
        stdin.write(encode_frame(header, blob))
        await stdin.drain()
        size = HEADER.unpack(await stdout.readexactly(4))[0]
        answer = orjson.loads(await stdout.readexactly(size))
        blob_size = HEADER.unpack(await stdout.readexactly(4))[0]
        return answer, await stdout.readexactly(blob_size)

    async def stop(self, *, kill: bool = False) -> int | None:
        process = self.process
        if process.returncode is None:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            elif process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        return process.returncode


class ParserRunner:
    """``async with ParserRunner() as runner: await runner.format_command(...)``."""

    def __init__(self, *, workers: int = 2, time_limit: float = 2.0, memory_mb: int = 512) -> None:
        self.size = max(workers, 1)
        self.time_limit = time_limit
        self.memory_mb = memory_mb
        self._calls: asyncio.Queue[_Call] = asyncio.Queue()
        self._alone: asyncio.Queue[_Call] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._here = Worker()  # runs the shipped scripts in this process

    async def start(self) -> None:
        children = await asyncio.wait_for(
            asyncio.gather(*(_Child.spawn(self.memory_mb) for _ in range(self.size))),
            START_TIMEOUT,
        )
        self._children.update(children)
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        for number, child in enumerate(children):
            task = self._group.create_task(self._serve(child), name=f"parser-worker-{number}")
            self._tasks.append(task)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._group is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._group.__aexit__(None, None, None)
            self._group = None
        children, self._children = list(self._children), set()
        await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
        for queue in (self._calls, self._alone):
            while not queue.empty():
                call = queue.get_nowait()
                if not call.future.done():
                    call.future.set_exception(ParserError("the parser runner is stopped"))

    async def __aenter__(self) -> ParserRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ calls

    async def format_command(
        self, script: Script, command: dict[str, Any], config: dict[str, Any]
    ) -> bytes:
        """``script.format_command(command, config)``: the bytes, or ``ParserError``."""
        _, blob = await self._call(script, {"op": "format", "command": command, "config": config})
        return blob

    async def parse(
        self, script: Script, payload: bytes, metadata: dict[str, Any], config: dict[str, Any]
    ) -> dict[str, Any]:
        """``script.parse(payload, metadata, config)``: a JSON object, or ``ParserError``."""
        request = {"op": "parse", "metadata": metadata, "config": config}
        answer, _ = await self._call(script, request, payload)
        result: dict[str, Any] = answer["result"]
        return result

    async def _call(
        self, script: Script, request: dict[str, Any], blob: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        if self._group is None:
            raise ParserError("the parser runner is not running")
        if script.origin == "builtin" and len(blob) <= IN_PROCESS_BYTES:
            request = {**request, "sha": script.sha256, "ref": script.ref, "source": script.source}
            answer, data = self._here.handle_untimed(request, blob)
        else:
            answer, data = await self._in_worker(script, request, blob)
        if not answer.get("ok"):
            raise ParserError(f"parser {script.ref}: {answer.get('error', 'failed')}")
        return answer, data

    async def _in_worker(
        self, script: Script, request: dict[str, Any], blob: bytes
    ) -> tuple[dict[str, Any], bytes]:
        future: asyncio.Future[tuple[dict[str, Any], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._calls.put_nowait(_Call(script, request, blob, future))
        return await future

    # ------------------------------------------------------------ the workers

    async def _next_batch(self) -> list[_Call]:
        if not self._alone.empty():
            return [self._alone.get_nowait()]
        batch = [await self._calls.get()]
        while len(batch) < BATCH and not self._calls.empty():
            batch.append(self._calls.get_nowait())
        return batch

    async def _serve(self, child: _Child) -> None:
        while True:
            batch = [call for call in await self._next_batch() if not call.future.done()]
            if not batch:
                continue
            try:
                answers = await self._run(child, batch)
            except ParserError as exc:
                child = await self._replace(child)
                self._retry_alone(batch, exc)
                continue
            except (ValueError, KeyError, TypeError) as exc:  # a worker that broke protocol
                child = await self._replace(child)
                self._retry_alone(batch, ParserError(f"its process misbehaved: {exc!r}"))
                continue
            for call, answer in zip(batch, answers, strict=True):
                if not call.future.done():
                    call.future.set_result(answer)

    def _retry_alone(self, batch: list[_Call], exc: ParserError) -> None:
        """The worker died or hung on this batch: a lone call failed for that reason;
        the calls of a larger batch each run again on their own."""
        if len(batch) == 1:
            call = batch[0]
            if not call.future.done():
                call.future.set_result(({"ok": False, "error": exc.message}, b""))
            return
        for call in batch:  # this worker's next batches, one call each
            call.alone = True
            self._alone.put_nowait(call)

    async def _run(self, child: _Child, batch: list[_Call]) -> list[tuple[dict[str, Any], bytes]]:
        requests, blobs = [], []
        for call in batch:
            request = {**call.request, "sha": call.script.sha256, "ref": call.script.ref}
            request["limit"] = self.time_limit
            if call.script.sha256 not in child.loaded:
                request["source"] = call.script.source
            requests.append({**request, "size": len(call.blob)})
            blobs.append(call.blob)
        deadline = self.time_limit * len(batch) + GRACE
        header, blob = await self._exchange(child, {"batch": requests}, b"".join(blobs), deadline)
        answers, offset = [], 0
        for call, answer in zip(batch, header["batch"], strict=True):
            size = int(answer.pop("size", 0))
            answers.append((answer, blob[offset : offset + size]))
            offset += size
            if answer.get("reload"):
                child.loaded.discard(call.script.sha256)
                answers[-1] = await self._reload(child, call)
            else:
                child.loaded.add(call.script.sha256)
        return answers

    async def _reload(self, child: _Child, call: _Call) -> tuple[dict[str, Any], bytes]:
        request = {**call.request, "sha": call.script.sha256, "ref": call.script.ref}
        request.update(limit=self.time_limit, source=call.script.source)
        answer = await self._exchange(child, request, call.blob, self.time_limit + GRACE)
        child.loaded.add(call.script.sha256)
        return answer

    async def _exchange(
        self, child: _Child, header: dict[str, Any], blob: bytes, deadline: float
    ) -> tuple[dict[str, Any], bytes]:
        try:
            return await asyncio.wait_for(child.exchange(header, blob), deadline)
        except TimeoutError:
            raise ParserError(f"timed out after {self.time_limit:g} s") from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            code = await child.stop(kill=True)
            raise ParserError(f"its process died (exit code {code})") from exc

    async def _replace(self, child: _Child) -> _Child:
        """Kill a child whose batch did not finish cleanly and start a fresh one."""
        self._children.discard(child)
        await child.stop(kill=True)
        fresh = await _Child.spawn(self.memory_mb)
        self._children.add(fresh)
        log.warning("replaced a parser worker (pid %s)", child.process.pid)
        return fresh
