"""The JobEngine and job documents, with real subprocesses."""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleetcloud.agent.document import parse_document, split_command
from fleetcloud.agent.engine import FAILED, SKIPPED, SUCCEEDED, Abort, JobEngine, tail_text
from fleetcloud.agent.errors import InvalidJobDocument
from tests.test_agent_support import eventually

PY = sys.executable


def step(command: Any, **action: Any) -> dict[str, Any]:
    return {
        "action": {
            "name": action.pop("name", "step"),
            "type": "runCommand",
            "input": {"command": command},
            **action,
        }
    }


def document(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": "1.0", "includeStdOut": True, "steps": list(steps), **extra}


def py(code: str) -> list[str]:
    return [PY, "-c", code]


@pytest.fixture
def engine(tmp_path: Path) -> JobEngine:
    handlers = tmp_path / "handlers"
    handlers.mkdir(mode=0o700)
    handlers.chmod(0o700)
    return JobEngine(handlers, output_cap=1024, kill_seconds=1.0, final_step_seconds=10)


async def run(engine: JobEngine, raw: dict[str, Any], **kwargs: Any) -> Any:
    return await engine.run(parse_document(raw), **kwargs)


# ---------------------------------------------------------------- documents


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("echo,hello", ["echo", "hello"]),
        ("echo,a\\,b,c", ["echo", "a,b", "c"]),
        ("printf,%s\\,%s,x,y", ["printf", "%s,%s", "x", "y"]),
        ("ls", ["ls"]),
        ("echo,,x", ["echo", "", "x"]),
        ("echo,back\\slash", ["echo", "back\\slash"]),
        ("echo,a\\\\,b", ["echo", "a\\,b"]),  # a\\, is a backslash, then a literal comma
    ],
)
def test_comma_separated_commands_split_like_aws(command: str, argv: list[str]) -> None:
    assert split_command(command) == argv


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "must be a JSON object"),
        ({"version": "2.0", "steps": [step("true")]}, "version '2.0' is not supported"),
        ({"steps": []}, "non-empty list of steps"),
        ({"steps": [{"action": {"type": "runScript"}}]}, "must be 'runCommand' or 'runHandler'"),
        ({"steps": [step(42)]}, "comma-separated string or a list"),
        ({"steps": [step("")]}, "command is empty"),
        ({"steps": [step("true", ignoreStepFailure="maybe")]}, "ignoreStepFailure must be"),
        ({"steps": [{"action": {"type": "runHandler", "input": {}}}]}, "must name a handler"),
    ],
)
def test_invalid_documents_say_why(raw: Any, message: str) -> None:
    with pytest.raises(InvalidJobDocument, match=message):
        parse_document(raw)


def test_aws_string_booleans_are_accepted() -> None:
    parsed = parse_document(document(step("true", ignoreStepFailure="true", allowStdErr="2")))
    assert parsed.steps[0].ignore_failure is True
    assert parsed.steps[0].allow_stderr == 2


# ---------------------------------------------------------------- running steps


async def test_a_job_runs_its_steps_in_order_and_captures_output(engine: JobEngine) -> None:
    result = await run(
        engine,
        document(
            step(["echo", "one"], name="first"),
            step(py("import sys; print('two'); print('warn', file=sys.stderr)"), name="second"),
        ),
    )
    assert result.status == SUCCEEDED
    assert result.exit_code == 0
    assert result.stdout == "one\ntwo\n"
    assert result.stderr == "warn\n"
    assert [s.status for s in result.steps] == [SUCCEEDED, SUCCEEDED]
    assert result.report()["status_details"]["steps"][1] == {
        "name": "second",
        "status": SUCCEEDED,
        "exit_code": 0,
    }


async def test_a_comma_separated_command_with_an_escaped_comma(engine: JobEngine) -> None:
    result = await run(engine, document(step("printf,%s|%s,a\\,b,c")))
    assert result.stdout == "a,b|c"


async def test_the_first_failing_step_stops_the_rest(engine: JobEngine, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = await run(
        engine,
        document(
            step(["true"], name="ok"),
            step(py("import sys; print('boom', file=sys.stderr); sys.exit(3)"), name="bad"),
            step(["touch", str(marker)], name="never"),
        ),
    )
    assert result.status == FAILED
    assert result.exit_code == 3
    assert [s.status for s in result.steps] == [SUCCEEDED, FAILED, SKIPPED]
    assert result.reason == "step 'bad' failed: exited with code 3"
    assert "boom" in result.stderr
    assert not marker.exists()


async def test_ignore_step_failure_carries_on(engine: JobEngine) -> None:
    result = await run(
        engine,
        document(
            step(["false"], name="flaky", ignoreStepFailure=True),
            step(["echo", "after"], name="next"),
        ),
    )
    assert result.status == SUCCEEDED
    assert [s.status for s in result.steps] == [FAILED, SUCCEEDED]
    assert result.steps[0].ignored
    assert result.stdout == "after\n"


async def test_final_step_runs_after_a_failure(engine: JobEngine, tmp_path: Path) -> None:
    cleaned = tmp_path / "cleaned"
    result = await run(
        engine,
        document(
            step(["false"], name="bad"),
            finalStep=step(["touch", str(cleaned)], name="cleanup"),
        ),
    )
    assert result.status == FAILED
    assert cleaned.exists()
    assert [s.name for s in result.steps] == ["bad", "cleanup"]
    assert result.steps[-1].status == SUCCEEDED


async def test_a_failing_final_step_fails_the_job(engine: JobEngine) -> None:
    result = await run(engine, document(step(["true"]), finalStep=step(["false"], name="fin")))
    assert result.status == FAILED
    assert result.reason == "step 'fin' failed: exited with code 1"


async def test_parallel_steps_run_at_the_same_time(engine: JobEngine, tmp_path: Path) -> None:
    # Each step waits until the other has started: only possible if they run together.
    a, b = tmp_path / "a", tmp_path / "b"
    wait_for = (
        "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); "
        "deadline = time.monotonic() + 20\n"
        "while not pathlib.Path(sys.argv[2]).exists():\n"
        "    assert time.monotonic() < deadline; time.sleep(0.01)\n"
        "print(sys.argv[1][-1])"
    )
    result = await run(
        engine,
        document(
            step([PY, "-c", wait_for, str(a), str(b)], name="a"),
            step([PY, "-c", wait_for, str(b), str(a)], name="b"),
            parallel=True,
        ),
        timeout=60,
    )
    assert result.status == SUCCEEDED, result.reason
    assert result.stdout == "a\nb\n"  # in step order, whichever finished first


async def test_output_is_capped_to_its_last_bytes(engine: JobEngine) -> None:
    code = "import sys; sys.stdout.write('x' * 5000 + 'END'); sys.stderr.write('e' * 3000 + 'ERR')"
    result = await run(engine, document(step(py(code))))
    assert len(result.stdout.encode()) == 1024
    assert result.stdout.endswith("xEND")
    assert len(result.stderr.encode()) == 1024
    assert result.stderr.endswith("eERR")


def test_tail_text_cuts_on_a_character_boundary() -> None:
    assert tail_text("aé" * 10, 5) == "éaé"
    assert tail_text("aé" * 10, 4) == "aé"  # half an "é" is dropped
    assert tail_text("short", 100) == "short"


async def test_allow_stderr_counts_lines(engine: JobEngine) -> None:
    noisy = py("import sys; print('a\\nb', file=sys.stderr)")
    strict = await run(engine, document(step(noisy, allowStdErr=1)))
    assert strict.status == FAILED
    assert "wrote 2 lines to stderr (allowStdErr is 1)" in (strict.reason or "")
    lenient = await run(engine, document(step(noisy, allowStdErr=2)))
    assert lenient.status == SUCCEEDED


async def test_a_missing_command_fails_clearly(engine: JobEngine) -> None:
    result = await run(engine, document(step("docker restart redis")))
    assert result.status == FAILED
    assert result.exit_code == 127
    assert "command not found: 'docker restart redis'" in (result.reason or "")
    assert "comma-separated: 'docker,restart,redis'" in (result.reason or "")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return state != "Z"


async def test_timeout_kills_the_whole_process_group(engine: JobEngine, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The step starts a child, which starts a sleeping grandchild; both write their pids.
    script = tmp_path / "tree.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "with open(sys.argv[1], 'a') as pids:\n"
        "    pids.write(f'{os.getpid()}\\n')\n"
        "if sys.argv[2] == 'child':\n"
        "    subprocess.Popen([sys.executable, __file__, sys.argv[1], 'grandchild'])\n"
        "time.sleep(300)\n"
    )
    started = time.monotonic()
    result = await run(engine, document(step([PY, str(script), str(pids), "child"])), timeout=2)
    assert time.monotonic() - started < 30
    assert result.status == FAILED
    assert result.timed_out
    assert result.reason == "timed out after 2 s"
    recorded = [int(line) for line in pids.read_text().split()]
    assert len(recorded) == 2, "the child and the grandchild both started"
    await eventually(lambda: not any(alive(pid) for pid in recorded), 10, "both to be gone")
    assert engine.groups == set()


async def test_timeout_skips_later_steps_but_runs_the_final_step(
    engine: JobEngine, tmp_path: Path
) -> None:
    cleaned = tmp_path / "cleaned"
    result = await run(
        engine,
        document(
            step(["sleep", "30"], name="slow"),
            step(["true"], name="next"),
            finalStep=step(["touch", str(cleaned)], name="cleanup"),
        ),
        timeout=0.5,
    )
    assert [s.status for s in result.steps] == [FAILED, SKIPPED, SUCCEEDED]
    assert cleaned.exists()


async def test_an_abort_stops_the_job_and_skips_the_final_step(
    engine: JobEngine, tmp_path: Path
) -> None:
    cleaned = tmp_path / "cleaned"
    abort = Abort()
    job = asyncio.create_task(
        run(
            engine,
            document(step(["sleep", "30"]), finalStep=step(["touch", str(cleaned)])),
            abort=abort,
        )
    )
    await eventually(lambda: engine.groups, 10, "the step to start")
    abort.set("canceled by the cloud")
    result = await asyncio.wait_for(job, 20)
    assert result.status == FAILED
    assert result.aborted
    assert result.reason == "canceled by the cloud"
    assert result.steps[-1].status == SKIPPED
    assert not cleaned.exists()


# ---------------------------------------------------------------- handlers and users


def handler_step(name: str, *args: str) -> dict[str, Any]:
    return {
        "action": {
            "name": "h",
            "type": "runHandler",
            "input": {"handler": name, "args": list(args)},
        }
    }


async def test_run_handler_runs_an_executable_from_the_handler_directory(
    engine: JobEngine,
) -> None:
    script = engine.handler_dir / "greet.sh"
    script.write_text('#!/bin/sh\necho "hello $1"\n')
    script.chmod(0o700)
    result = await run(engine, document(handler_step("greet.sh", "fleet")))
    assert result.status == SUCCEEDED, result.reason
    assert result.stdout == "hello fleet\n"


async def test_run_handler_refuses_a_directory_that_is_not_0700(engine: JobEngine) -> None:
    script = engine.handler_dir / "greet.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o700)
    engine.handler_dir.chmod(0o755)
    result = await run(engine, document(handler_step("greet.sh")))
    assert result.status == FAILED
    assert "must be owned by the agent's user with mode 0700 (it has 0755)" in (result.reason or "")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../escape.sh", "must be a file name in the handler directory"),
        ("missing.sh", "is not in"),
    ],
)
async def test_run_handler_refuses_names_outside_the_directory(
    engine: JobEngine, name: str, message: str
) -> None:
    result = await run(engine, document(handler_step(name)))
    assert result.status == FAILED
    assert message in (result.reason or "")


async def test_run_handler_refuses_a_handler_others_may_write(engine: JobEngine) -> None:
    script = engine.handler_dir / "open.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o777)
    result = await run(engine, document(handler_step("open.sh")))
    assert result.status == FAILED
    assert "is writable by others" in (result.reason or "")


async def test_run_as_a_user_that_does_not_exist_fails_clearly(engine: JobEngine) -> None:
    result = await run(engine, document(step(["true"], runAsUser="no-such-user-fc")))
    assert result.status == FAILED
    assert result.reason == (
        "step 'step' failed: cannot run as user 'no-such-user-fc': there is no such user"
    )


async def test_run_as_another_user(engine: JobEngine) -> None:
    result = await run(engine, document(step(["id", "-un"], runAsUser="nobody")))
    if os.geteuid() == 0:
        assert result.status == SUCCEEDED, result.reason
        assert result.stdout == "nobody\n"
    else:
        me = pwd.getpwuid(os.geteuid()).pw_name
        assert f"the agent runs as {me!r}, and only root may switch users" in (result.reason or "")
