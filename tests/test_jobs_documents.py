"""Job documents, templates, request bodies and rollout decisions (pure, no I/O)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fleetcloud.core.errors import BadRequest
from fleetcloud.jobs.documents import (
    InvalidDocument,
    join_argv,
    parse_argv,
    parse_document,
    placeholders,
    substitute,
)
from fleetcloud.jobs.model import AbortCriterion, RetryCriterion
from fleetcloud.jobs.requests import parse_execute, parse_status_update
from fleetcloud.jobs.rollout import abort_reason, release_allowance, should_retry
from fleetcloud.jobs.states import ExecutionStatus as S
from fleetcloud.jobs.templates import (
    BUILTIN_BY_NAME,
    BUILTINS,
    check_template,
    parse_parameter_specs,
    render,
)


def document(*actions: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": "1.0", "steps": [{"action": a} for a in actions], **extra}


def run(command: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "step", "type": "runCommand", "input": {"command": command}, **extra}


# ---------------------------------------------------------------- argv


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("docker,restart,redis", ["docker", "restart", "redis"]),
        ("echo,a\\,b", ["echo", "a,b"]),
        ("echo,a\\,b\\,c,d", ["echo", "a,b,c", "d"]),
        ("echo,", ["echo", ""]),
        ("echo,,x", ["echo", "", "x"]),
        ("printf,%s\\n", ["printf", "%s\\n"]),  # a backslash before anything else stays
        ("uptime", ["uptime"]),
        ("echo,trailing\\", ["echo", "trailing\\"]),
        (["echo", "a,b", "c"], ["echo", "a,b", "c"]),
        (["sleep", 5], ["sleep", "5"]),
    ],
)
def test_command_argv(command: Any, argv: list[str]) -> None:
    assert parse_argv(command) == argv


@pytest.mark.parametrize("argv", [["echo", "a,b"], ["x", "", "y,z", "w"], ["ls", "-la"]])
def test_join_argv_round_trips(argv: list[str]) -> None:
    assert parse_argv(join_argv(argv)) == argv


@pytest.mark.parametrize("command", ["", ",ls", " ,x", [], [""], ["ls", None], 5, {"a": 1}])
def test_command_without_a_program_is_refused(command: Any) -> None:
    with pytest.raises(InvalidDocument, match="command"):
        parse_argv(command)


# ---------------------------------------------------------------- documents


def test_document_parses_into_steps() -> None:
    parsed = parse_document(
        document(
            run("systemctl,restart,nginx", runAsUser="root", allowStdErr=2),
            {"type": "runHandler", "input": {"handler": "collect.sh", "args": ["a", 1]}},
            includeStdOut=True,
            parallel="true",
            finalStep={"action": run(["rm", "-f", "/tmp/x"], ignoreStepFailure=True)},
        )
    )
    first, second = parsed.steps
    assert first.argv == ("systemctl", "restart", "nginx")
    assert (first.run_as_user, first.allow_stderr, first.ignore_failure) == ("root", 2, False)
    assert (second.name, second.handler, second.args) == ("step-2", "collect.sh", ("a", "1"))
    assert second.allow_stderr is None
    assert parsed.final_step is not None
    assert parsed.final_step.ignore_failure
    assert parsed.include_stdout
    assert parsed.parallel


def test_the_seed_example_is_valid() -> None:
    seed = {
        "version": "1.0",
        "steps": [{"action": {"type": "runCommand", "input": {"command": "docker restart redis"}}}],
        "includeStdOut": True,
    }
    assert parse_document(seed).steps[0].argv == ("docker restart redis",)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ([1], "job_document must be a JSON object"),
        ({"steps": [{"action": run("ls")}]}, 'version must be "1.0"'),
        (document(run("ls"), version="2.0"), 'version must be "1.0"'),
        ({"version": "1.0"}, "steps must be a non-empty list"),
        ({"version": "1.0", "steps": []}, "steps must be a non-empty list"),
        ({"version": "1.0", "steps": "ls"}, "steps must be a non-empty list"),
        (document(run("ls"), extra=1), "unknown field 'extra'"),
        ({"version": "1.0", "steps": ["ls"]}, "steps[0] must be a JSON object"),
        ({"version": "1.0", "steps": [{"run": 1}]}, "steps[0] has unknown field 'run'"),
        ({"version": "1.0", "steps": [{}]}, "steps[0].action must be a JSON object"),
        (document({"type": "runShell", "input": {}}), "type must be 'runCommand' or"),
        (document({"input": {"command": "ls"}}), "type must be 'runCommand' or"),
        (document({"type": "runCommand"}), "input must be a JSON object"),
        (document({"type": "runCommand", "input": {}}), "command is missing"),
        (document(run("")), "names no program"),
        (document(run(["ls", {"a": 1}])), "string or a list of strings"),
        (document({"type": "runCommand", "input": {"command": "ls", "cwd": "/"}}), "'cwd'"),
        (document(run("ls", runAsUser="")), "runAsUser must be a user name"),
        (document(run("ls", runAsUser=0)), "runAsUser must be a user name"),
        (document(run("ls", allowStdErr=-1)), "allowStdErr must be a number of lines"),
        (document(run("ls", allowStdErr="lots")), "allowStdErr must be a number of lines"),
        (document(run("ls", ignoreStepFailure="yes")), "ignoreStepFailure must be true or"),
        (document(run("ls", ignoreStepfailure=True)), "unknown field 'ignoreStepfailure'"),
        (document(run("ls", name="")), "name must be a non-empty string"),
        (document(run("ls", name="x" * 129)), "name must be a non-empty string"),
        (document(run("ls"), includeStdOut=1), "includeStdOut must be true or false"),
        (document(run("ls"), parallel="sometimes"), "parallel must be true or false"),
        (document(run("ls"), finalStep="ls"), "finalStep must be a JSON object"),
        (document({"type": "runHandler", "input": {}}), "handler must be a file name"),
        (document({"type": "runHandler", "input": {"handler": "../x"}}), "no '/'"),
        (document({"type": "runHandler", "input": {"handler": "a/b"}}), "no '/'"),
        (document({"type": "runHandler", "input": {"handler": ".hidden"}}), "handler must be"),
        (
            document({"type": "runHandler", "input": {"handler": "h", "args": "a,b"}}),
            "args must be a list of strings",
        ),
        (
            document({"type": "runHandler", "input": {"handler": "h", "path": "/opt"}}),
            "unknown field 'path'",
        ),
        (document(*[run("ls")] * 65), "at most 64"),
        (document(run("x" * 40_000)), "larger than 32768 bytes"),
    ],
)
def test_invalid_documents_say_what_is_wrong(bad: Any, words: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        parse_document(bad)
    assert words in caught.value.message
    assert caught.value.status == 400


# ---------------------------------------------------------------- templates


def test_builtin_templates_are_valid_and_numbered_like_the_seed() -> None:
    assert [(t.id, t.name) for t in BUILTINS] == [
        (1, "run-command"),
        (2, "restart-service"),
        (3, "health-check"),  # the seed's example: template_id = 3  # health-check template
        (4, "reboot"),
    ]
    for template in BUILTINS:
        check_template(template.document, template.parameters)


def test_render_substitutes_parameters() -> None:
    rendered, values = render(BUILTIN_BY_NAME["restart-service"], {"service": "nginx"})
    assert values == {"service": "nginx"}
    argv = [parse_document(rendered).steps[i].argv for i in (0, 1)]
    assert argv == [("systemctl", "restart", "nginx"), ("systemctl", "is-active", "nginx")]
    assert "${" not in str(rendered)
    assert "${aws:iot:parameter:service}" in str(BUILTIN_BY_NAME["restart-service"].document)


def test_render_uses_defaults_and_takes_numbers() -> None:
    reboot = BUILTIN_BY_NAME["reboot"]
    assert parse_document(render(reboot, None)[0]).steps[0].argv == ("shutdown", "-r", "+1")
    assert parse_document(render(reboot, {"delay_minutes": 5})[0]).steps[0].argv[-1] == "+5"


@pytest.mark.parametrize(
    ("name", "given", "words"),
    [
        ("restart-service", {}, "parameter 'service' is required"),
        ("restart-service", {"service": "nginx,--now"}, "does not match"),
        ("restart-service", {"service": ""}, "does not match"),
        ("restart-service", {"service": True}, "must be a string"),
        ("restart-service", {"service": "a", "user": "root"}, "unknown parameter 'user'"),
        ("restart-service", ["nginx"], "parameters must be an object"),
        ("health-check", {"x": "1"}, "this template takes: none"),
        ("reboot", {"delay_minutes": "soon"}, "does not match"),
        ("run-command", {"command": "x" * 5000}, "longer than 4096"),
        ("run-command", {"command": ","}, "names no program"),
    ],
)
def test_render_refuses_bad_parameters(name: str, given: Any, words: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        render(BUILTIN_BY_NAME[name], given)
    assert words in caught.value.message


def test_placeholders_and_substitute_reach_every_string() -> None:
    doc = document(run("echo,${aws:iot:parameter:a}", runAsUser="${aws:iot:parameter:b}"))
    assert placeholders(doc) == {"a", "b"}
    done = substitute(doc, {"a": "hi", "b": "pi"})
    assert done["steps"][0]["action"]["input"]["command"] == "echo,hi"
    assert done["steps"][0]["action"]["runAsUser"] == "pi"
    original = copy.deepcopy(doc)
    with pytest.raises(InvalidDocument, match="parameter 'b', which has no value"):
        substitute(doc, {"a": "x"})
    assert doc == original


@pytest.mark.parametrize(
    ("specs", "words"),
    [
        ("x", "must be a list"),
        ([{"key": "a b"}], "key must be 1-128 letters"),
        ([{"key": "a"}, {"key": "a"}], "declares 'a' more than once"),
        ([{"key": "a", "regex": "("}], "not a valid regular expression"),
        ([{"key": "a", "regex": "[0-9]+", "default": "x"}], "does not match"),
        ([{"key": "a", "optional": "no"}], "optional must be true or false"),
        ([{"key": "a", "colour": "red"}], "unknown field 'colour'"),
        ([{"key": "a", "description": 5}], "description must be a string"),
    ],
)
def test_parameter_specs_are_checked(specs: Any, words: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        parse_parameter_specs(specs)
    assert words in caught.value.message


def test_template_parameters_must_match_the_document() -> None:
    doc = document(run("echo,${aws:iot:parameter:word}"))
    with pytest.raises(InvalidDocument, match="uses parameter 'word', which parameters does not"):
        check_template(doc, ())
    specs = parse_parameter_specs([{"key": "word"}, {"key": "other"}])
    with pytest.raises(InvalidDocument, match="'other' is declared but job_document never"):
        check_template(doc, specs)
    check_template(doc, specs[:1])


# ---------------------------------------------------------------- request bodies


BASE = {"job_name": "x", "job_document": document(run("ls")), "target_type": "all"}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"job_name": ""}, "job_name must be a non-empty string"),
        ({"job_name": None}, "job_name must be a non-empty string"),
        ({"template_id": 3}, "either template_id (with parameters) or job_document"),
        ({"job_document": None}, "either template_id"),
        ({"parameters": {"a": "b"}}, "parameters apply only to a template_id"),
        ({"target_type": "fleet"}, "target_type must be device, group or all, not 'fleet'"),
        ({"target_type": None}, "target_type must be device, group or all"),
        ({"target_devices": ["1"]}, "target_type all takes no target_devices"),
        ({"target_type": "device"}, "target_devices must be a non-empty list"),
        ({"target_type": "device", "target_devices": []}, "target_devices must be a non-empty"),
        ({"target_type": "device", "target_devices": "1"}, "target_devices must be a non-empty"),
        ({"target_type": "device", "target_devices": [True]}, "must list ids"),
        ({"target_type": "group"}, "target_groups must be a non-empty list"),
        ({"timeout_seconds": -5}, "timeout_seconds must be a whole number from 1 to 604800"),
        ({"timeout_seconds": 0}, "timeout_seconds must be a whole number"),
        ({"timeout_seconds": 1.5}, "timeout_seconds must be a whole number"),
        ({"timeout_seconds": "60"}, "timeout_seconds must be a whole number"),
        ({"timeout_seconds": 10**9}, "timeout_seconds must be a whole number"),
        ({"maximum_per_minute": 0}, "maximum_per_minute must be a whole number from 1 to 1000"),
        ({"abort_criteria": {}}, "abort_criteria must be a list of objects"),
        ({"abort_criteria": [{"failure_type": "OOPS"}]}, "failure_type must be one of"),
        (
            {"abort_criteria": [{"failure_type": "FAILED", "threshold_percentage": 101}]},
            "threshold_percentage must be from 0 to 100",
        ),
        (
            {"abort_criteria": [{"failure_type": "FAILED", "threshold_percentage": 5, "x": 1}]},
            "unknown field 'x'",
        ),
        ({"retries": [{"failure_type": "REJECTED"}]}, "failure_type must be one of FAILED"),
        (
            {"retries": [{"failure_type": "FAILED", "number_of_retries": 11}]},
            "number_of_retries must be a whole number from 0 to 10",
        ),
        ({"target_device": ["1"]}, "unknown field 'target_device'"),
    ],
)
def test_execute_body_refusals(change: dict[str, Any], words: str) -> None:
    # None removes a field (except job_name, whose null is itself what is refused).
    merged = {**BASE, **change}
    body = {key: value for key, value in merged.items() if value is not None or key == "job_name"}
    with pytest.raises(BadRequest) as caught:
        parse_execute(body)
    assert words in caught.value.message


def test_execute_body_accepts_groups_by_name_and_dedupes_targets() -> None:
    parsed = parse_execute({**BASE, "target_type": "group", "target_groups": ["edge", "edge", 12]})
    assert parsed.targets == ("edge", "12")
    parsed = parse_execute({**BASE, "target_type": "device", "target_devices": ["5", 5, 7]})
    assert parsed.targets == ("5", "7")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "status is missing"),
        ({"status": "DONE"}, "not an execution status"),
        ({"status": 3}, "status must be a string"),
        ({"status": "SUCCEEDED", "exit_code": "0"}, "exit_code must be a whole number"),
        ({"status": "SUCCEEDED", "exit_code": True}, "exit_code must be a whole number"),
        ({"status": "SUCCEEDED", "stdout": 5}, "stdout must be a string"),
        ({"status": "SUCCEEDED", "status_details": "ok"}, "status_details must be a JSON"),
        ({"status": "SUCCEEDED", "status_details": {"x": "y" * 9000}}, "larger than 8192"),
        ({"status": "SUCCEEDED", "expected_version": 0}, "expected_version must be a whole"),
    ],
)
def test_status_update_refusals(body: dict[str, Any], words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_status_update(body)
    assert words in caught.value.message


def test_status_update_keeps_the_tail_of_long_output_and_ignores_unknown_fields() -> None:
    update = parse_status_update(
        {"status": "failed", "stdout": "a" * 70_000 + "END", "exit_code": -9, "agent": "x"}
    )
    assert update.status is S.FAILED
    assert update.fields["stdout"].endswith("END")
    assert len(update.fields["stdout"]) == 64 * 1024
    assert update.fields["exit_code"] == -9
    assert "stderr" not in update.fields


# ---------------------------------------------------------------- rollout decisions


def test_release_allowance_opens_a_window_a_minute_long() -> None:
    assert release_allowance(1000, 0, 0, None) == (0, 0, None)
    assert release_allowance(1000, 0, 0, 2) == (1000, 0, 2)
    assert release_allowance(30_000, 1000, 2, 2) == (1000, 2, 0)
    assert release_allowance(60_999, 1000, 2, 2) == (1000, 2, 0)
    assert release_allowance(61_000, 1000, 2, 2) == (61_000, 0, 2)


def test_abort_fires_only_past_the_threshold_and_the_minimum() -> None:
    half = [AbortCriterion("FAILED", 50.0, 4)]
    assert abort_reason(half, {"FAILED": 3}) is None  # only 3 finished
    assert abort_reason(half, {"FAILED": 2, "SUCCEEDED": 2}) is None  # 50% is not more
    reason = abort_reason(half, {"FAILED": 3, "SUCCEEDED": 1, "QUEUED": 10})
    assert reason is not None
    assert "3 of 4" in reason
    assert "75.0%" in reason
    assert abort_reason(half, {"TIMED_OUT": 4}) is None
    assert abort_reason(
        [AbortCriterion("ALL", 50.0, 4)], {"TIMED_OUT": 2, "REJECTED": 1, "SUCCEEDED": 1}
    )
    assert abort_reason([AbortCriterion("FAILED", 0.0, 1)], {"CANCELED": 5}) is None


def test_retry_counts_earlier_attempts_of_the_same_kind() -> None:
    twice = [RetryCriterion("FAILED", 2)]
    assert should_retry(twice, [S.FAILED])
    assert should_retry(twice, [S.FAILED, S.FAILED])
    assert not should_retry(twice, [S.FAILED, S.FAILED, S.FAILED])
    assert not should_retry(twice, [S.TIMED_OUT])
    assert not should_retry(twice, [S.SUCCEEDED])
    both = [RetryCriterion("FAILED", 1), RetryCriterion("TIMED_OUT", 1)]
    assert should_retry(both, [S.FAILED, S.TIMED_OUT])
    assert not should_retry(both, [S.FAILED, S.TIMED_OUT, S.FAILED])
    assert should_retry([RetryCriterion("ALL", 2)], [S.TIMED_OUT, S.FAILED])
    assert not should_retry([RetryCriterion("ALL", 0)], [S.FAILED])
    assert not should_retry([], [S.FAILED])
