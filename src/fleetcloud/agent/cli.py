"""``fleetcloud agent`` (run the device agent), ``agent status``, ``agent history``.

The agent itself is configured by environment variables (the seed's, see docs/agent.md);
``status`` and ``history`` read the agent's data directory, so they work whether or not
the agent is running.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import httpx

from fleetcloud.agent import files, queue
from fleetcloud.agent.config import DEFAULT_DATA_DIR
from fleetcloud.agent.credentials import CredentialFile
from fleetcloud.agent.history import CurrentJobFile, JobHistory
from fleetcloud.core import jsonish

DATA_HELP = "The agent's data directory [env FLEETCLOUD_AGENT_DATA]"


def data_option(function: Any) -> Any:
    return click.option(
        "--data-dir",
        envvar="FLEETCLOUD_AGENT_DATA",
        default=DEFAULT_DATA_DIR,
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=DATA_HELP,
    )(function)


@click.group(invoke_without_command=True)
@click.pass_context
def agent(ctx: click.Context) -> None:
    """Run the device agent: cloud jobs, and the local API for device apps.

    Configured by environment variables: ENABLE_CLOUD_JOBS, ENABLE_JOB_ENGINE,
    CLOUD_API_URL, CLOUD_JOBS_POLLING_INTERVAL (ms), DEBUG, and DEVICE_UUID +
    DEVICE_API_KEY or PROVISIONING_KEY (see docs/agent.md for all of them).
    """
    if ctx.invoked_subcommand is None:
        from fleetcloud.agent.main import main

        sys.exit(main())


@agent.command()
@data_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts")
def status(data_dir: Path, as_json: bool) -> None:
    """Is the agent running, which device is it, what is it doing."""
    report = agent_status(data_dir.expanduser())
    if as_json:
        click.echo(jsonish.dumps_str(report))
        return
    click.echo("\n".join(describe(report)))


@agent.command()
@data_option
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="How many of the latest jobs to show",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines for scripts")
def history(data_dir: Path, limit: int, as_json: bool) -> None:
    """The jobs this device ran, newest last."""
    entries = JobHistory(data_dir.expanduser() / "history.jsonl").recent(limit)
    if as_json:
        for entry in entries:
            click.echo(jsonish.dumps_str(entry))
        return
    if not entries:
        click.echo("no jobs yet")
    for entry in entries:
        click.echo(history_line(entry))


def agent_status(data_dir: Path) -> dict[str, Any]:
    from fleetcloud.agent.main import RUNTIME, running_pid

    credentials = CredentialFile(data_dir).load()
    current = CurrentJobFile(data_dir / "current.json").load()
    last = JobHistory(data_dir / "history.jsonl").recent(1)
    pid = running_pid(data_dir) if data_dir.exists() else None
    runtime = (files.read_json(data_dir / RUNTIME) or {}) if pid is not None else {}
    uuid = runtime.get("device_uuid") or (credentials.uuid if credentials else None)
    return {
        "running": pid is not None,
        "pid": pid,
        "data_dir": str(data_dir),
        "device_uuid": uuid,
        "current_job": current.to_json() if current else None,
        "last_job": last[-1] if last else None,
        "queue": queue.stats(data_dir / "outbox.db"),
        "live": live_status(runtime.get("local_api")),
    }


def live_status(local_api: str | None) -> dict[str, Any] | None:
    """What the running agent says about itself on its local API, if it answers."""
    if not local_api:
        return None
    try:
        answer = httpx.get(f"{local_api}/v2/status", timeout=2)
        found: dict[str, Any] = answer.json()
    except (httpx.HTTPError, ValueError):
        return None
    return found


def describe(report: dict[str, Any]) -> list[str]:
    running = f"running (pid {report['pid']})" if report["running"] else "not running"
    lines = [
        f"Agent: {running}",
        f"Data directory: {report['data_dir']}",
        f"Device UUID: {report['device_uuid'] or 'not provisioned'}",
    ]
    live = report.get("live") or {}
    if live:
        lines.append(f"Polling for jobs: {'yes' if live.get('polling') else 'no'}")
    current = report["current_job"]
    if current:
        pending = " (final status not yet delivered)" if current["phase"] == "finished" else ""
        lines.append(
            f"Current job: {current['job_name'] or '?'} ({current['job_id']}), "
            f"{current['phase']} since {current['received_at']}{pending}"
        )
    else:
        lines.append("Current job: none")
    last = report["last_job"]
    lines.append(f"Last job: {history_line(last) if last else 'none'}")
    waiting = report["queue"]
    lines.append(
        f"Messages waiting for the cloud: {waiting['pending']} ({waiting['pending_bytes']} bytes)"
        + (f", {waiting['rejected']} refused by the cloud" if waiting["rejected"] else "")
    )
    return lines


def history_line(entry: dict[str, Any]) -> str:
    duration = entry.get("duration_ms")
    parts = [
        str(entry.get("finished_at", "")),
        str(entry.get("status", "")),
        f"{entry.get('job_name') or '?'} ({entry.get('job_id')})",
    ]
    if entry.get("exit_code") is not None:
        parts.append(f"exit {entry['exit_code']}")
    if duration is not None:
        parts.append(f"{duration} ms")
    if entry.get("reason"):
        parts.append(str(entry["reason"]))
    if entry.get("report") and entry["report"] != "delivered":
        parts.append(f"report {entry['report']}")
    return "  ".join(parts)
