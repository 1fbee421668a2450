"""Parser scripts through the connector-independent delivery pipeline: every failure
mode ends that command FAILED with the reason and harms nothing else; a new upload takes
effect for the next command. The transport is a recording stub (the seam)."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleetcloud.commands import CommandMessage, lifecycle
from fleetcloud.commands.core.models import CommandStatus
from fleetcloud.commands.delivery import Delivery, SettingsCache, TransportError, save_settings
from fleetcloud.commands.lifecycle import StoredCommand
from fleetcloud.commands.parsers import compact_sensor
from fleetcloud.commands.runner import IN_PROCESS_BYTES, ParserError, ParserRunner
from fleetcloud.commands.scripts import ParserLibrary, Script, digest, put_script
from fleetcloud.commands.tracker import CommandTracker
from fleetcloud.platform import Platform
from tests.conftest import Tenant


@dataclass
class Recorder:
    """A transport that remembers what it was given."""

    sent: list[bytes] = field(default_factory=list)
    acknowledges: bool = True
    down: bool = False

    async def send(self, command: StoredCommand, data: bytes) -> bool:
        if self.down:
            raise TransportError("unreachable")
        self.sent.append(data)
        return self.acknowledges


@dataclass
class Pipeline:
    platform: Platform
    tenant: Tenant
    delivery: Delivery

    async def command(self, ref: str, command_type: str = "go", **payload: object) -> StoredCommand:
        message = CommandMessage(
            device_id=str(self.tenant.device_id),
            command_type=command_type,
            payload=payload,
            protocol="mqtt",
            parser_script_ref=ref,
        )
        [stored] = await self.platform.store.write(lifecycle.record([message]))
        return stored

    async def upload(self, ref: str, source: str) -> None:
        tenant = self.tenant
        await self.platform.store.write(
            put_script(tenant.organisation.id, ref, source, tenant.organisation.agent_id)
        )

    async def outcome(self, command: StoredCommand, transport: Recorder) -> tuple[str, str | None]:
        await self.delivery.deliver(command, transport)
        stored = await self.platform.store.read(lifecycle.get(command.request_id))
        assert stored is not None
        return stored.status.value, stored.reason


@pytest.fixture
async def pipeline(platform: Platform, tenant: Tenant, tmp_path: Path) -> AsyncIterator[Pipeline]:
    (tmp_path / "from_dir.py").write_text(
        "def format_command(command, config):\n"
        "    return b'dir:' + command['command_type'].encode()\n"
    )
    library = ParserLibrary(platform.store, tmp_path)
    async with (
        CommandTracker(platform.store) as tracker,
        ParserRunner(workers=2, time_limit=0.5) as runner,
    ):
        delivery = Delivery(tracker, library, runner, SettingsCache(platform.store, ttl=0))
        yield Pipeline(platform, tenant, delivery)


FAILURES = {
    "missing.py": None,
    "no_function.py": "def parse(payload, metadata, config):\n    return {}\n",
    "raises.py": "def format_command(c, config):\n    raise KeyError('measurement_interval')\n",
    "returns_none.py": "def format_command(command, config):\n    return None\n",
    "returns_text.py": "def format_command(command, config):\n    return 'text'\n",
    "hangs.py": "def format_command(command, config):\n    while True:\n        pass\n",
    "sleeps.py": (
        "import time\n"
        "def format_command(command, config):\n"
        "    while True:\n"
        "        try:\n"
        "            time.sleep(1)\n"
        "        except BaseException:\n"
        "            pass\n"
    ),
    "crashes.py": "import os\ndef format_command(command, config):\n    os._exit(139)\n",
    "bad_import.py": "import no_such_module\ndef format_command(c, config):\n    return b''\n",
}
REASONS = {
    "missing.py": "unknown parser script 'missing.py'",
    "no_function.py": "parser no_function.py: no_function.py has no format_command() function",
    "raises.py": "parser raises.py: raised KeyError: 'measurement_interval'",
    "returns_none.py": "parser returns_none.py: format_command returned None",
    "returns_text.py": "parser returns_text.py: format_command returned str, not bytes",
    "hangs.py": "parser hangs.py: timed out after 0.5 s",
    "sleeps.py": "parser sleeps.py: timed out after 0.5 s",
    "crashes.py": "parser crashes.py: its process died (exit code ",
    "bad_import.py": (
        "parser bad_import.py: raised ModuleNotFoundError: No module named 'no_such_module'"
    ),
}


@pytest.mark.parametrize("ref", sorted(FAILURES))
async def test_a_failing_parser_fails_only_its_command(pipeline: Pipeline, ref: str) -> None:
    if FAILURES[ref] is not None:
        await pipeline.upload(ref, str(FAILURES[ref]))
    good = "def format_command(command, config):\n    return b'ok'\n"
    await pipeline.upload("good.py", good)
    transport = Recorder()
    bad = await pipeline.command(ref)
    status, reason = await pipeline.outcome(bad, transport)
    assert status == "FAILED"
    assert reason is not None
    assert reason.startswith(REASONS[ref])  # a crash's exit code is the OS's business
    assert transport.sent == []
    after = await pipeline.command("good.py")
    assert await pipeline.outcome(after, transport) == ("DELIVERED", "broker ack")
    assert transport.sent == [b"ok"]


async def test_a_new_upload_takes_effect_for_the_next_command(pipeline: Pipeline) -> None:
    transport = Recorder()
    await pipeline.upload("versioned.py", "def format_command(c, cfg):\n    return b'v1'\n")
    await pipeline.outcome(await pipeline.command("versioned.py"), transport)
    await pipeline.upload("versioned.py", "def format_command(c, cfg):\n    return b'v2'\n")
    await pipeline.outcome(await pipeline.command("versioned"), transport)
    await pipeline.upload("versioned.py", "def format_command(c, cfg):\n    return b'v1'\n")
    await pipeline.outcome(await pipeline.command("versioned.py"), transport)
    assert transport.sent == [b"v1", b"v2", b"v1"]


async def test_directory_builtin_and_config(pipeline: Pipeline) -> None:
    transport = Recorder()
    await pipeline.outcome(await pipeline.command("from_dir.py", "hello"), transport)
    assert transport.sent == [b"dir:hello"]
    tenant = pipeline.tenant
    await pipeline.platform.store.write(
        save_settings(tenant.device_id, None, {"include_metadata": True})
    )
    command = await pipeline.command("json_passthrough.py", "set", level=3)
    await pipeline.outcome(command, transport)
    assert transport.sent[-1] == (
        b'{"request_id":"' + command.request_id.encode() + b'","command_type":"set",'
        b'"payload":{"level":3},"metadata":{}}'
    )


async def test_compact_sensor_bytes(pipeline: Pipeline) -> None:
    transport = Recorder()
    command = await pipeline.command("compact_sensor.py", "reboot", delay=30)
    await pipeline.outcome(command, transport)
    rid = command.request_id.encode()
    frame = bytes([1, 0x30, len(rid)]) + rid + struct.pack(">H", 30)
    assert transport.sent == [frame + struct.pack(">H", compact_sensor.crc16(frame))]
    invalid = await pipeline.command("compact_sensor.py", "config_update", measurement_interval=0)
    status, reason = await pipeline.outcome(invalid, transport)
    assert status == "FAILED"
    assert reason is not None
    assert "measurement_interval must be between 1 and 604800" in reason
    unknown = await pipeline.command("compact_sensor.py", "self_destruct")
    assert await pipeline.outcome(unknown, transport) == (
        "FAILED",
        "parser compact_sensor.py: format_command returned None",
    )


async def test_transport_failure_changes_nothing(pipeline: Pipeline) -> None:
    command = await pipeline.command("json_passthrough.py")
    assert await pipeline.outcome(command, Recorder(down=True)) == ("QUEUED", None)
    assert await pipeline.outcome(command, Recorder(acknowledges=False)) == ("SENT", None)


async def test_expired_command_is_not_formatted(pipeline: Pipeline) -> None:
    message = CommandMessage(
        device_id=str(pipeline.tenant.device_id),
        command_type="reboot",
        protocol="mqtt",
        parser_script_ref="json_passthrough.py",
        expires_at=0,
    )
    [stored] = await pipeline.platform.store.write(lifecycle.record([message]))
    transport = Recorder()
    assert await pipeline.outcome(stored, transport) == ("EXPIRED", "expired before delivery")
    assert transport.sent == []
    assert CommandStatus.EXPIRED.is_final


async def test_a_hanging_or_crashing_script_spares_the_calls_batched_with_it() -> None:
    def script(ref: str, body: str) -> Script:
        source = f"def format_command(command, config):\n{body}\n"
        return Script(ref, digest(source), source, "upload")

    good = script("good.py", "    return command['n'].to_bytes(2, 'big')")
    hangs = script("hangs.py", "    while True:\n        pass")
    crashes = script("crashes.py", "    import os\n    os._exit(3)")
    async with ParserRunner(workers=1, time_limit=0.3) as runner:
        scripts = {5: hangs, 12: crashes}
        calls = [runner.format_command(scripts.get(n, good), {"n": n}, {}) for n in range(20)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert str(results[5]) == "parser hangs.py: timed out after 0.3 s"
    assert str(results[12]).startswith("parser crashes.py: its process died")
    assert [r for i, r in enumerate(results) if i not in (5, 12)] == [
        n.to_bytes(2, "big") for n in range(20) if n not in (5, 12)
    ]


PID_SCRIPT = (
    "import os\n"
    "def format_command(command, config):\n"
    "    return str(os.getpid()).encode()\n"
    "def parse(payload, metadata, config):\n"
    "    return {'pid': os.getpid(), 'size': len(payload)}\n"
)


async def test_shipped_scripts_run_in_the_server_others_in_a_worker() -> None:
    shipped = Script("pid.py", digest(PID_SCRIPT), PID_SCRIPT, "builtin")
    uploaded = Script("pid.py", digest(PID_SCRIPT), PID_SCRIPT, "upload")
    here = os.getpid()
    async with ParserRunner(workers=1) as runner:
        assert await runner.format_command(shipped, {}, {}) == str(here).encode()
        assert await runner.format_command(uploaded, {}, {}) != str(here).encode()
        small = await runner.parse(shipped, b"x" * IN_PROCESS_BYTES, {}, {})
        assert small == {"pid": here, "size": IN_PROCESS_BYTES}
        large = await runner.parse(shipped, b"x" * (IN_PROCESS_BYTES + 1), {}, {})
        assert large["pid"] != here  # a large uplink goes to a worker, under its time limit
        assert large["size"] == IN_PROCESS_BYTES + 1


@pytest.mark.parametrize(
    "ref", ["no_function.py", "raises.py", "returns_none.py", "returns_text.py", "bad_import.py"]
)
async def test_a_failing_shipped_script_fails_as_it_would_in_a_worker(ref: str) -> None:
    source = str(FAILURES[ref])
    reasons = []
    async with ParserRunner(workers=1) as runner:
        for origin in ("builtin", "upload"):
            with pytest.raises(ParserError) as failed:
                await runner.format_command(Script(ref, digest(source), source, origin), {}, {})
            reasons.append(failed.value.message)
    assert reasons[0] == reasons[1]
    assert reasons[0].startswith(REASONS[ref])
