"""``fleetcloud app new``: a processor or integration project laid out as the seed shows.

::

    my-processor/
    ├── src/my_processor/
    │   ├── __init__.py       # handler(event, context)
    │   ├── application.py    # the Application subclass
    │   ├── app_config.py     # the config schema (and export())
    │   └── app_ui.py         # UI components (processors)
    ├── doover_config.json    # metadata, with the exported config_schema
    ├── build.sh              # package.zip: locked dependencies + src/
    ├── pyproject.toml
    └── .gitignore
"""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

from fleetcloud.core.errors import FleetError

KINDS = {"processor": "PRO", "integration": "INT"}
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

HANDLER = '''\
from typing import Any

from fleetcloud.sdk.processor import run_app

from .app_config import {cls}Config
from .application import {cls}


def handler(event: dict[str, Any], context):
    """Entry point: the fleetcloud runtime calls this once per event."""
    {cls}Config.clear_elements()
    run_app(
        {cls}(config={cls}Config()),
        event,
        context,
    )
'''

PROCESSOR_APPLICATION = '''\
from datetime import datetime, timezone

from fleetcloud.sdk.processor import Application, MessageCreateEvent, ScheduleEvent

from .app_config import {cls}Config
from .app_ui import {cls}UI


class {cls}(Application):
    config: {cls}Config  # type hint for the IDE

    async def setup(self):
        """Called at the start of every invocation."""
        self.ui = {cls}UI()
        self.ui_manager.add_children(*self.ui.fetch())

    async def on_message_create(self, event: MessageCreateEvent):
        """A message arrived on a subscribed channel."""
        count = await self.get_tag("messages", 0) + 1
        await self.set_tag("messages", count)
        self.ui.messages.update(count)
        self.ui.last_channel.update(event.channel_name)
        await self.ping_connection(online_at=datetime.now(timezone.utc))

    async def on_schedule(self, event: ScheduleEvent):
        """The schedule in the deployment config fired."""
        await self.set_tag("last_schedule", datetime.now(timezone.utc).isoformat())
'''

PROCESSOR_CONFIG = """\
from pathlib import Path

from fleetcloud.sdk import config
from fleetcloud.sdk.processor import ManySubscriptionConfig, ScheduleConfig


class {cls}Config(config.Schema):
    def __init__(self):
        # Channels whose messages invoke on_message_create
        self.subscription = ManySubscriptionConfig()
        # "rate(5 minutes)", "cron(0 9 * * ? *)", "*/5 * * * *" or "disabled"
        self.schedule = ScheduleConfig()


def export():
    {cls}Config().export(
        Path(__file__).parents[2] / "doover_config.json",
        "{name}",
    )


if __name__ == "__main__":
    export()
"""

PROCESSOR_UI = """\
from fleetcloud.sdk import ui


class {cls}UI:
    def __init__(self):
        self.messages = ui.NumericVariable("messages", "Messages received", precision=0)
        self.last_channel = ui.TextVariable("last_channel", "Last channel")

    def fetch(self):
        return self.messages, self.last_channel
"""

INTEGRATION_APPLICATION = '''\
from fleetcloud.sdk.processor import Application, IngestionEndpointEvent

from .app_config import {cls}Config


class {cls}(Application):
    config: {cls}Config  # type hint for the IDE

    async def on_ingestion_endpoint(self, event: IngestionEndpointEvent):
        """An external system POSTed to this integration's ingestion URL."""
        payload = event.payload  # parsed by parse_ingestion_event_payload (JSON by default)
        received = await self.get_tag("received", 0)
        await self.set_tag("received", received + 1)
        device = payload.get("device_id") if isinstance(payload, dict) else None
        if device is not None:
            agent_id = await self.get_device_agent(device)
            await self.api.publish_message(agent_id, "on_external_event", payload)
'''

INTEGRATION_CONFIG = """\
from pathlib import Path

from fleetcloud.sdk import config
from fleetcloud.sdk.processor import ExtendedPermissionsConfig, IngestionEndpointConfig


class {cls}Config(config.Schema):
    def __init__(self):
        # CIDR allow-list, HMAC signing key, throttle, mini-token
        self.integration = IngestionEndpointConfig()
        # Devices this integration may publish to
        self.permissions = ExtendedPermissionsConfig()


def export():
    {cls}Config().export(
        Path(__file__).parents[2] / "doover_config.json",
        "{name}",
    )


if __name__ == "__main__":
    export()
"""

BUILD_SH = """\
#!/bin/sh

uv export --frozen --no-dev --no-editable --no-emit-project --no-emit-package fleetcloud \\
   --quiet -o requirements.txt

uv pip install \\
   --no-deps \\
   --no-installer-metadata \\
   --no-compile-bytecode \\
   --python-platform {platform} \\
   --python {python} \\
   --quiet \\
   --target packages_export \\
   --refresh \\
   -r requirements.txt

rm -f package.zip
mkdir -p packages_export

cd packages_export
zip -rq ../package.zip .
cd ..

zip -rq package.zip src

echo "OK"
"""

PYPROJECT = """\
[project]
name = "{project}"
version = "0.1.0"
description = "{display} — a fleetcloud {kind}"
requires-python = ">={python}"
# fleetcloud.sdk is provided by the runtime: it is not a dependency of the package.
# For local tests, use an environment that has fleetcloud installed.
dependencies = []

[project.scripts]
export-config = "{package}.app_config:export"
"""

GITIGNORE = """\
packages_export/
package.zip
requirements.txt
__pycache__/
.venv/
"""


def names(name: str) -> tuple[str, str, str, str]:
    """``my-processor`` → (project dir, package, class, display name)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]
    if not words or not words[0][0].isalpha():
        raise FleetError(f"{name!r} is not a usable app name: start with a letter")
    package = "_".join(w.lower() for w in words)
    project = "-".join(w.lower() for w in words)
    cls = "".join(w[:1].upper() + w[1:] for w in words)
    display = " ".join(w[:1].upper() + w[1:] for w in words)
    return project, package, cls, display


def python_platform() -> str:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    return f"{machine or platform.machine().lower()}-manylinux2014"


def create(name: str, kind: str, parent: Path) -> Path:
    """Write the project for app ``name`` (``processor`` or ``integration``) under
    ``parent``; returns its directory."""
    if kind not in KINDS:
        raise FleetError(f"--type must be processor or integration, not {kind!r}")
    project, package, cls, display = names(name)
    root = parent / project
    if root.exists():
        raise FleetError(f"{root} already exists")
    values = {"cls": cls, "name": package}
    source = root / "src" / package
    files: dict[Path, str] = {
        source / "__init__.py": HANDLER.format(**values),
        root / "build.sh": BUILD_SH.format(platform=python_platform(), python=PYTHON),
        root / "pyproject.toml": PYPROJECT.format(
            project=project, display=display, kind=kind, python=PYTHON, package=package
        ),
        root / ".gitignore": GITIGNORE,
    }
    if kind == "processor":
        files[source / "application.py"] = PROCESSOR_APPLICATION.format(**values)
        files[source / "app_config.py"] = PROCESSOR_CONFIG.format(**values)
        files[source / "app_ui.py"] = PROCESSOR_UI.format(**values)
    else:
        files[source / "application.py"] = INTEGRATION_APPLICATION.format(**values)
        files[source / "app_config.py"] = INTEGRATION_CONFIG.format(**values)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "build.sh").chmod(0o755)
    write_metadata(root, package, display, KINDS[kind], cls)
    return root


def write_metadata(root: Path, package: str, display: str, app_type: str, cls: str) -> None:
    """``doover_config.json``: the seed's metadata, then the config schema exported by the
    project's own ``app_config`` (as its ``export()`` does)."""
    handler = f"src.{package}.handler"
    entry: dict[str, Any] = {
        "name": package,
        "display_name": display,
        "type": app_type,
        "visibility": "PUB",
        "allow_many": False,
        "handler": handler,
        "lambda_config": {
            "Runtime": f"python{PYTHON}",
            "Timeout": 300,
            "MemorySize": 128,
            "Handler": handler,
        },
        "config_schema": {},
    }
    path = root / "doover_config.json"
    path.write_text(json.dumps({package: entry}, indent=4) + "\n")
    config_file = root / "src" / package / "app_config.py"
    spec = importlib.util.spec_from_file_location(f"_fleetcloud_new_{package}", config_file)
    if spec is None or spec.loader is None:
        raise FleetError(f"cannot load {config_file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    getattr(module, f"{cls}Config")().export(path, package)
