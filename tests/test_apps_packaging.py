"""Packaging: doover_config.json, package checks and extraction, ``fleetcloud app new``
(whose apps run in the SDK's harness) and ``fleetcloud app build``."""

from __future__ import annotations

import importlib
import io
import json
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fleetcloud.apps.build import BuildError, build
from fleetcloud.apps.packaging import (
    Manifest,
    check_config,
    extract,
    inspect_package,
    read_manifest,
)
from fleetcloud.apps.scaffold import create
from fleetcloud.core.errors import BadRequest, FleetError, ValidationFailed
from fleetcloud.sdk.testing import AppHarness
from tests.test_apps_kit import zip_files

SEED_CONFIG = {
    "my_processor": {
        "name": "my_processor",
        "display_name": "My Processor",
        "type": "PRO",
        "visibility": "PUB",
        "allow_many": True,
        "handler": "src.my_processor.handler",
        "lambda_config": {
            "Runtime": "python3.13",
            "Timeout": 300,
            "MemorySize": 128,
            "Handler": "src.my_processor.handler",
        },
        "config_schema": {},
    }
}
LIMIT = 10 * 1024 * 1024


def manifest(**changes: Any) -> Manifest:
    entry = {**SEED_CONFIG["my_processor"], **changes}
    return read_manifest({"my_processor": entry})


def test_the_seeds_doover_config_reads_as_it_says() -> None:
    found = read_manifest(SEED_CONFIG)
    assert (found.name, found.display_name, found.type) == ("my_processor", "My Processor", "PRO")
    assert (found.module, found.function) == ("src.my_processor", "handler")
    assert (found.timeout_seconds, found.memory_mb) == (300, 128)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "APP"}, "my_processor.type must be PRO (processor) or INT (integration)"),
        ({"handler": "handler", "lambda_config": {}}, "my_processor.handler must be a dotted"),
        ({"lambda_config": {"Timeout": 0}}, "lambda_config.Timeout must be a whole number 1-900"),
        ({"lambda_config": {"MemorySize": "lots"}}, "lambda_config.MemorySize must be a whole"),
        ({"config_schema": {"type": 5}}, "my_processor.config_schema is not a valid JSON Schema"),
        ({"name": "no spaces"}, "my_processor.name must start with a letter"),
    ],
)
def test_a_bad_doover_config_is_refused_with_the_reason(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        manifest(**changes)
    assert message in refused.value.message


def test_a_config_with_two_apps_needs_a_name() -> None:
    document = {**SEED_CONFIG, "other": {**SEED_CONFIG["my_processor"], "name": "other"}}
    with pytest.raises(BadRequest, match="exactly one app, or say which: my_processor, other"):
        read_manifest(document)
    assert read_manifest(document, "other").name == "other"


def test_deployment_config_problems_are_all_listed() -> None:
    schema = {
        "type": "object",
        "properties": {"pin": {"type": "integer", "maximum": 7}},
        "required": ["api_key"],
    }
    with pytest.raises(ValidationFailed) as refused:
        check_config("pump", schema, {"pin": 9})
    assert refused.value.message == (
        "the deployment config does not match pump's config schema: "
        "(root): 'api_key' is a required property; pin: 9 is greater than the maximum of 7"
    )


def test_a_package_holding_the_handler_is_accepted() -> None:
    data = zip_files({"src/my_processor/__init__.py": "def handler(e, c): pass\n"})
    package = inspect_package(data, manifest(), max_unpacked=LIMIT)
    assert package.files == 1
    assert len(package.sha256) == 64


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"src/other/__init__.py": ""}, "the package has no module src.my_processor"),
        ({"../evil.py": "", "src/my_processor.py": ""}, "unsafe path: '../evil.py'"),
        ({"/etc/passwd": "", "src/my_processor.py": ""}, "unsafe path: '/etc/passwd'"),
        ({"src/my_processor.py": "x" * (LIMIT + 1)}, "the package unpacks to"),
    ],
)
def test_an_unsafe_or_incomplete_package_is_refused(files: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        inspect_package(zip_files(dict(files)), manifest(), max_unpacked=LIMIT)
    assert message in refused.value.message


def test_symbolic_links_and_non_zips_are_refused() -> None:
    info = zipfile.ZipInfo("src/my_processor/__init__.py")
    info.external_attr = 0o120777 << 16  # a symbolic link's mode
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as archive:
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(BadRequest, match="symbolic link"):
        inspect_package(raw.getvalue(), manifest(), max_unpacked=LIMIT)
    with pytest.raises(BadRequest, match="not a zip file"):
        inspect_package(b"PK not really", manifest(), max_unpacked=LIMIT)


def test_extraction_happens_once_per_content(tmp_path: Path) -> None:
    data = zip_files({"src/app/__init__.py": "VALUE = 1\n", "dep/__init__.py": ""})
    sha = "ab" * 32
    with ThreadPoolExecutor(4) as pool:
        roots = list(pool.map(lambda _: extract(tmp_path, sha, data), range(8)))
    assert set(roots) == {tmp_path / sha}
    assert (tmp_path / sha / "src" / "app" / "__init__.py").read_text() == "VALUE = 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [sha]  # no staging left behind


def _import(project: Path, package: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(project / "src"))
    module = importlib.import_module(package)
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    return module


def test_a_new_processor_runs_as_scaffolded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = create("Level Watch", "processor", tmp_path)
    assert root == tmp_path / "level-watch"
    document = json.loads((root / "doover_config.json").read_text())
    found = read_manifest(document)
    assert (found.name, found.type, found.handler) == (
        "level_watch",
        "PRO",
        "src.level_watch.handler",
    )
    assert "dv_proc_subscriptions" in found.config_schema["properties"]
    assert (root / "build.sh").stat().st_mode & 0o111
    assert "zip -rq package.zip src" in (root / "build.sh").read_text()
    assert "package.zip" in (root / ".gitignore").read_text()

    module = _import(root, "level_watch", monkeypatch)
    harness = AppHarness(handler=module.handler, app_key="level_watch")
    harness.invoke(harness.message_create("tank", {"level": 3}))
    harness.invoke(harness.message_create("tank", {"level": 4}))
    assert harness.tags["messages"] == 2
    assert harness.ui_element("messages")["currentValue"] == 2
    assert harness.ui_element("last_channel")["currentValue"] == "tank"
    assert harness.connection["status"]["determination"] == "Online"


def test_a_new_integration_forwards_what_it_receives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = create("partner-hook", "integration", tmp_path)
    found = read_manifest(json.loads((root / "doover_config.json").read_text()))
    assert found.type == "INT"
    assert {"dv_proc_ingestion", "dv_proc_extended_permissions"} <= set(
        found.config_schema["properties"]
    )
    assert not (root / "src" / "partner_hook" / "app_ui.py").exists()
    module = _import(root, "partner_hook", monkeypatch)
    harness = AppHarness(
        handler=module.handler,
        app_key="partner_hook",
        agent_kind="organisation",
        devices=["pump-7"],
    )
    harness.invoke(harness.ingestion({"device_id": "pump-7", "level": 9}))
    assert harness.tags["received"] == 1
    device = harness.device_ids["pump-7"]
    assert harness.published("on_external_event", agent_id=device) == [
        {"device_id": "pump-7", "level": 9}
    ]


def test_new_refuses_an_existing_directory(tmp_path: Path) -> None:
    create("twice", "processor", tmp_path)
    with pytest.raises(FleetError, match="already exists"):
        create("twice", "processor", tmp_path)


def test_build_zips_src_and_skips_bytecode(tmp_path: Path) -> None:
    root = create("packed", "processor", tmp_path)
    cache = root / "src" / "packed" / "__pycache__"
    cache.mkdir()
    (cache / "x.cpython-311.pyc").write_bytes(b"\0")
    package = build(root)
    with zipfile.ZipFile(package) as archive:
        names = sorted(archive.namelist())
    assert names == [
        "src/packed/__init__.py",
        "src/packed/app_config.py",
        "src/packed/app_ui.py",
        "src/packed/application.py",
    ]
    inspect_package(
        package.read_bytes(),
        read_manifest(json.loads((root / "doover_config.json").read_text())),
        max_unpacked=LIMIT,
    )


def test_build_needs_a_lock_for_dependencies(tmp_path: Path) -> None:
    root = create("needy", "processor", tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace("dependencies = []", 'dependencies = ["requests"]')
    )
    with pytest.raises(BuildError, match="has dependencies, but"):
        build(root, uv="uv")
    with pytest.raises(BuildError, match="no src/ directory"):
        build(tmp_path)
