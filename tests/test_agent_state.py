"""The agent's configuration, banner and what it keeps on disk."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fleetcloud.agent import files
from fleetcloud.agent.cli import agent_status, describe
from fleetcloud.agent.config import AgentConfig
from fleetcloud.agent.credentials import CredentialFile, Credentials, known_credentials
from fleetcloud.agent.history import FINISHED, RUNNING, CurrentJob, CurrentJobFile, JobHistory
from fleetcloud.agent.main import banner, instance_lock, running_pid
from fleetcloud.core.errors import ConfigError

BASE = {"FLEETCLOUD_AGENT_DATA": "/tmp/fc-agent-test", "CLOUD_API_URL": "http://cloud:8000/api/v1"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- configuration


def test_the_seed_variables_and_their_defaults() -> None:
    config = AgentConfig.from_env(BASE)
    assert not config.enable_cloud_jobs
    assert not config.enable_job_engine
    assert config.polling_interval_ms == 30_000
    assert config.polling_interval == 30.0
    assert config.local_api_port == 48484
    assert config.server_url == "http://cloud:8000"  # the data API, from CLOUD_API_URL
    assert config.handler_dir == Path("/tmp/fc-agent-test/handlers")
    assert not config.debug


def test_jobs_run_only_with_both_switches() -> None:
    both = AgentConfig.from_env({**BASE, "ENABLE_CLOUD_JOBS": "true", "ENABLE_JOB_ENGINE": "1"})
    assert both.jobs_enabled
    one = AgentConfig.from_env({**BASE, "ENABLE_CLOUD_JOBS": "true"})
    assert not one.jobs_enabled


def test_the_data_directory_defaults_to_the_home_directory() -> None:
    config = AgentConfig.from_env({"CLOUD_API_URL": BASE["CLOUD_API_URL"]})
    assert config.data_dir == Path("~/.fleetcloud-agent").expanduser()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLOUD_JOBS_POLLING_INTERVAL": "soon"}, "CLOUD_JOBS_POLLING_INTERVAL must be a whole"),
        ({"CLOUD_JOBS_POLLING_INTERVAL": "5"}, "must be at least 10"),
        ({"ENABLE_CLOUD_JOBS": "maybe"}, "ENABLE_CLOUD_JOBS must be true or false"),
        ({"DEVICE_UUID": "1"}, "DEVICE_UUID is set but DEVICE_API_KEY is not"),
        ({"DEVICE_API_KEY": "k"}, "DEVICE_API_KEY is set but DEVICE_UUID is not"),
        ({"FLEETCLOUD_AGENT_LOCAL_API_PORT": "70000"}, "between 0 and 65535"),
        ({"FLEETCLOUD_LOG_FORMAT": "xml"}, "must be one of text, json"),
        ({"CLOUD_API_URL": "", "ENABLE_CLOUD_JOBS": "true"}, "CLOUD_API_URL is not set"),
        ({"CLOUD_API_URL": "http://cloud/jobs"}, "neither CLOUD_API_URL"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AgentConfig.from_env({**BASE, **env})


def test_the_data_api_can_be_given_apart_from_the_jobs_api() -> None:
    config = AgentConfig.from_env(
        {**BASE, "CLOUD_API_URL": "http://jobs/v1", "FLEETCLOUD_URL": "http://data/"}
    )
    assert config.server_url == "http://data"


def test_the_banner_is_the_seeds() -> None:
    config = AgentConfig.from_env({**BASE, "CLOUD_JOBS_POLLING_INTERVAL": "30000"})
    lines = banner(config, Credentials("8479359e", "key", "8479359e", "environment"))
    assert lines == [
        "✅ Cloud Jobs Adapter initialized",
        "   Cloud API: http://cloud:8000/api/v1",
        "   Device UUID: 8479359e",
        "   Polling interval: 30000ms (30s)",
        "   Status: Polling for jobs...",
    ]


# ---------------------------------------------------------------- files


def test_the_data_directory_and_its_files_are_private(tmp_path: Path) -> None:
    data = files.private_dir(tmp_path / "agent")
    assert mode(data) == 0o700
    files.write_json(data / "x.json", {"a": 1})
    assert mode(data / "x.json") == 0o600
    assert files.read_json(data / "x.json") == {"a": 1}
    (data / "garbage.json").write_text("{not json")
    assert files.read_json(data / "garbage.json") is None


def test_credentials_from_the_environment_win_over_the_file(tmp_path: Path) -> None:
    config = AgentConfig.from_env({**BASE, "FLEETCLOUD_AGENT_DATA": str(tmp_path)})
    assert known_credentials(config) is None
    CredentialFile(tmp_path).save(Credentials("42", "key-42", "42", "registered"), None)
    assert mode(tmp_path / "credentials.json") == 0o600
    from_file = known_credentials(config)
    assert from_file is not None
    assert (from_file.uuid, from_file.api_key, from_file.source) == ("42", "key-42", "file")
    env = {
        **BASE,
        "FLEETCLOUD_AGENT_DATA": str(tmp_path),
        "DEVICE_UUID": "7",
        "DEVICE_API_KEY": "k",
    }
    from_env = known_credentials(AgentConfig.from_env(env))
    assert from_env is not None
    assert (from_env.uuid, from_env.source) == ("7", "environment")


def test_history_is_kept_on_disk_and_bounded(tmp_path: Path) -> None:
    history = JobHistory(tmp_path / "history.jsonl", limit=3)
    for number in range(10):
        history.append({"job_id": str(number), "status": "SUCCEEDED"})
    kept = JobHistory(tmp_path / "history.jsonl", limit=3).recent()
    assert [entry["job_id"] for entry in kept] == ["7", "8", "9"]
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) <= 6
    assert [e["job_id"] for e in history.recent(2)] == ["8", "9"]


def test_a_torn_history_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text('{"job_id": "1"}\n{"job_id": "2", "sta')
    assert [e["job_id"] for e in JobHistory(path).recent()] == ["1"]


def test_the_current_job_file_round_trips(tmp_path: Path) -> None:
    current = CurrentJobFile(tmp_path / "current.json")
    assert current.load() is None
    job = CurrentJob("99", "restart", RUNNING, "2026-01-01T00:00:00Z", [{"pgid": 5}])
    current.save(job)
    assert current.load() == job
    job.phase, job.report = FINISHED, {"status": "SUCCEEDED"}
    current.save(job)
    loaded = current.load()
    assert loaded is not None
    assert loaded.report == {"status": "SUCCEEDED"}
    current.clear()
    assert current.load() is None


def test_one_agent_per_data_directory(tmp_path: Path) -> None:
    assert running_pid(tmp_path) is None
    with instance_lock(tmp_path):
        assert running_pid(tmp_path) is not None
        with (
            pytest.raises(ConfigError, match=r"another agent .* is running"),
            instance_lock(tmp_path),
        ):
            pass
    assert running_pid(tmp_path) is None


def test_status_of_an_agent_that_is_not_running(tmp_path: Path) -> None:
    CredentialFile(tmp_path).save(Credentials("42", "key", "42", "registered"), None)
    CurrentJobFile(tmp_path / "current.json").save(
        CurrentJob("7", "update", FINISHED, "2026-01-01T00:00:00Z", report={"status": "FAILED"})
    )
    JobHistory(tmp_path / "history.jsonl").append(
        {"job_id": "6", "job_name": "hc", "status": "SUCCEEDED", "finished_at": "t", "exit_code": 0}
    )
    report = agent_status(tmp_path)
    assert not report["running"]
    assert report["device_uuid"] == "42"
    text = "\n".join(describe(report))
    assert "Agent: not running" in text
    assert (
        "Current job: update (7), finished since 2026-01-01T00:00:00Z (final status not yet" in text
    )
    assert "Last job: t  SUCCEEDED  hc (6)  exit 0" in text
    assert "Messages waiting for the cloud: 0 (0 bytes)" in text


def test_a_busy_local_api_port_is_a_clear_error() -> None:
    from fleetcloud.agent.local_api import listen

    first = listen(0)
    try:
        with pytest.raises(ConfigError, match="set FLEETCLOUD_AGENT_LOCAL_API_PORT"):
            listen(first.getsockname()[1]).close()
    finally:
        first.close()
