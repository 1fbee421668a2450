"""A parser worker: a child process that runs parser scripts for ``runner.ParserRunner``.

Started as ``python -m fleetcloud.commands.worker``. It reads requests from its standard
input and answers on its standard output, one frame each::

    frame = u32 header length | header (JSON) | u32 blob length | blob

A request header is ``{"op": "format" | "parse", "sha", "ref", "source"?, "command"? |
"metadata"?, "config", "limit"}`` (the blob is the uplink payload for ``parse``); the
answer is ``{"ok": true, "result"?}`` with the formatted bytes as blob, or ``{"ok":
false, "error"}``, or ``{"ok": false, "reload": true}`` when it no longer holds the script
(the runner then sends the source again). Several requests travel as one frame
``{"batch": [request, …]}`` whose blob is their blobs end to end (each request says its
``size``); the answer is ``{"batch": [answer, …]}`` in the same form.

Scripts are compiled once per content hash and kept (least recently used dropped past
``CACHE_SIZE``). Each call runs under ``SIGALRM`` at its time limit; a script that ignores
that is killed by the runner. Whatever a script prints goes to standard error, never into
the protocol. Only the standard library and orjson are imported here.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import struct
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import orjson

CACHE_SIZE = 256
HEADER = struct.Struct(">I")


class ParserTimeout(BaseException):
    """Raised in a script that runs past its time limit (a BaseException, so that an
    ``except Exception`` inside the script does not swallow it)."""


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    header = orjson.loads(stream.read(HEADER.unpack(head)[0]))
    (size,) = HEADER.unpack(stream.read(4))
    return header, stream.read(size)


def encode_frame(header: dict[str, Any], blob: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return HEADER.pack(len(head)) + head + HEADER.pack(len(blob)) + blob


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: types.FrameType | None) -> None:
        raise ParserTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Worker:
    def __init__(self) -> None:
        self.modules: OrderedDict[str, types.ModuleType] = OrderedDict()

    def module(self, header: dict[str, Any]) -> types.ModuleType | None:
        sha = str(header["sha"])
        module = self.modules.get(sha)
        if module is not None:
            self.modules.move_to_end(sha)
            return module
        source = header.get("source")
        if source is None:
            return None
        ref = str(header.get("ref", "parser.py"))
        module = types.ModuleType(f"fleetcloud_parser_{sha[:16]}")
        module.__file__ = ref
        exec(compile(source, ref, "exec", dont_inherit=True), module.__dict__)  # noqa: S102
        self.modules[sha] = module
        while len(self.modules) > CACHE_SIZE:
            self.modules.popitem(last=False)
        return module

    def handle_frame(self, header: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        """One request, or a batch (``{"batch": [request…]}``, each with the ``size`` of
        its part of the blob); a batch's answers carry the ``size`` of theirs."""
        if "batch" not in header:
            return self.handle(header, blob)
        answers, parts, offset = [], [], 0
        for request in header["batch"]:
            size = int(request.get("size", 0))
            answer, part = self.handle(request, blob[offset : offset + size])
            offset += size
            answers.append({**answer, "size": len(part)})
            parts.append(part)
        return {"batch": answers}, b"".join(parts)

    def handle(self, header: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            with time_limit(float(header.get("limit", 5.0))):
                return self.handle_untimed(header, blob)
        except ParserTimeout:
            return {"ok": False, "error": f"timed out after {header.get('limit')} s"}, b""

    def handle_untimed(self, header: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        """``handle`` without the time limit: for fleetcloud's own scripts, run in the
        server (``runner.ParserRunner``), where no signal may interrupt the event loop."""
        try:
            return self._run(header, blob)
        except Exception as exc:
            return {"ok": False, "error": f"raised {type(exc).__name__}: {exc}"}, b""

    def _run(self, header: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        module = self.module(header)
        if module is None:
            return {"ok": False, "reload": True}, b""
        op = header["op"]
        name = "format_command" if op == "format" else "parse"
        function: Callable[..., Any] | None = getattr(module, name, None)
        if not callable(function):
            return {"ok": False, "error": f"{header.get('ref')} has no {name}() function"}, b""
        if op == "format":
            return _formatted(function(header["command"], header.get("config") or {}))
        return _parsed(function(blob, header.get("metadata") or {}, header.get("config") or {}))


def _formatted(result: Any) -> tuple[dict[str, Any], bytes]:
    if result is None:
        return {"ok": False, "error": "format_command returned None"}, b""
    if isinstance(result, bytearray | memoryview):
        result = bytes(result)
    if not isinstance(result, bytes):
        kind = type(result).__name__
        return {"ok": False, "error": f"format_command returned {kind}, not bytes"}, b""
    return {"ok": True}, result


def _parsed(result: Any) -> tuple[dict[str, Any], bytes]:
    if result is None:
        return {"ok": False, "error": "parse returned None"}, b""
    if not isinstance(result, dict):
        return {"ok": False, "error": f"parse returned {type(result).__name__}, not a dict"}, b""
    try:
        orjson.dumps(result)
    except TypeError as exc:
        return {"ok": False, "error": f"parse returned a dict that is not JSON: {exc}"}, b""
    return {"ok": True, "result": result}, b""


def limit_memory(megabytes: int) -> None:
    if megabytes > 0:
        size = megabytes * 1024 * 1024
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (size, size))


def main() -> None:
    # Keep the protocol's pipes to ourselves: a script's print() must not corrupt it.
    requests = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    limit_memory(int(os.environ.get("FLEETCLOUD_PARSER_MEMORY_MB", "512")))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    worker = Worker()
    while True:
        frame = read_frame(requests)
        if frame is None:
            return
        header, blob = worker.handle_frame(*frame)
        answers.write(encode_frame(header, blob))
        answers.flush()


if __name__ == "__main__":
    main()
