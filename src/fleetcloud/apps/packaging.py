"""Deployment packages and their metadata: read ``doover_config.json``, check a
``package.zip``, and extract it once per content hash. Pure apart from ``extract``.

A package is what the seed's ``build.sh`` makes: the locked dependencies installed at the
zip's root, plus the ``src/`` tree. The handler path (``src.my_processor.handler``) names
a module inside the zip and a function in it; the runtime puts the extracted root first
on ``sys.path``, so both the dependencies and ``src`` import.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator

from fleetcloud.core.errors import BadRequest, ValidationFailed

APP_TYPES = {"PRO": "processor", "INT": "integration"}
DEFAULT_TIMEOUT = 300
MAX_TIMEOUT = 900
DEFAULT_MEMORY = 128
MAX_MEMORY = 10_240
MAX_ENTRIES = 50_000
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
HANDLER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class Manifest:
    """One app's entry in ``doover_config.json``."""

    name: str
    display_name: str
    type: str  # "PRO" | "INT"
    handler: str
    timeout_seconds: int
    memory_mb: int
    config_schema: dict[str, Any]
    entry: dict[str, Any]

    @property
    def module(self) -> str:
        return self.handler.rsplit(".", 1)[0]

    @property
    def function(self) -> str:
        return self.handler.rsplit(".", 1)[1]


def read_manifest(document: Any, name: str | None = None) -> Manifest:
    """The app ``name`` of a ``doover_config.json`` document (or its only app)."""
    if not isinstance(document, dict):
        raise BadRequest("doover_config.json must hold a JSON object of apps by name")
    key, entry = _pick(document, name)
    lambda_config = entry.get("lambda_config") or {}
    if not isinstance(lambda_config, dict):
        raise BadRequest(f"{key}.lambda_config must be a JSON object")
    app_name = entry.get("name", key)
    if not isinstance(app_name, str) or not NAME.match(app_name):
        raise BadRequest(
            f"{key}.name must start with a letter and hold only letters, digits, _ and -"
        )
    return Manifest(
        name=app_name,
        display_name=_text(entry.get("display_name"), app_name),
        type=_type(key, entry.get("type")),
        handler=_handler(key, entry, lambda_config),
        timeout_seconds=_bounded(key, "Timeout", lambda_config, DEFAULT_TIMEOUT, MAX_TIMEOUT, 1),
        memory_mb=_bounded(key, "MemorySize", lambda_config, DEFAULT_MEMORY, MAX_MEMORY, 1),
        config_schema=_schema(key, entry.get("config_schema")),
        entry=entry,
    )


def _pick(document: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any]]:
    if name is not None:
        entry = document.get(name)
        if not isinstance(entry, dict):
            raise BadRequest(f"doover_config.json has no app {name!r}")
        return name, entry
    apps = {k: v for k, v in document.items() if isinstance(v, dict) and v.get("type")}
    if len(apps) != 1:
        found = ", ".join(sorted(apps)) or "none"
        raise BadRequest(f"doover_config.json must name exactly one app, or say which: {found}")
    return next(iter(apps.items()))


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value.strip() else default


def _type(key: str, value: Any) -> str:
    if value not in APP_TYPES:
        raise BadRequest(f"{key}.type must be PRO (processor) or INT (integration), not {value!r}")
    return str(value)


def _handler(key: str, entry: dict[str, Any], lambda_config: dict[str, Any]) -> str:
    handler = entry.get("handler") or lambda_config.get("Handler")
    if not isinstance(handler, str) or not HANDLER.match(handler):
        raise BadRequest(
            f"{key}.handler must be a dotted path to a function, such as "
            f"src.my_app.handler, not {handler!r}"
        )
    return handler


def _bounded(
    key: str, field: str, config: dict[str, Any], default: int, high: int, low: int
) -> int:
    value = config.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{key}.lambda_config.{field} must be a whole number {low}-{high}")
    return value


def _schema(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{key}.config_schema must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        raise BadRequest(f"{key}.config_schema is not a valid JSON Schema: {exc.message}") from exc
    return value


def config_problems(schema: dict[str, Any], config: Any) -> list[str]:
    """Every way a deployment config breaks the app's ``config_schema``, one line each."""
    if not isinstance(config, dict):
        return ["(root): the deployment config must be a JSON object"]
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]


def check_config(manifest_name: str, schema: dict[str, Any], config: Any) -> None:
    problems = config_problems(schema, config)
    if problems:
        raise ValidationFailed(
            f"the deployment config does not match {manifest_name}'s config schema: "
            + "; ".join(problems)
        )


# ---------------------------------------------------------------- packages


@dataclass(frozen=True)
class Package:
    data: bytes
    sha256: str
    unpacked: int
    files: int


def inspect_package(data: bytes, manifest: Manifest, *, max_unpacked: int) -> Package:
    """Check a deployment zip: safe paths, size, and that it holds the handler's module."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise BadRequest(f"the package is not a zip file: {exc}") from exc
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ENTRIES:
            raise BadRequest(f"the package has {len(entries)} entries; at most {MAX_ENTRIES}")
        unpacked = 0
        for info in entries:
            _check_entry(info)
            unpacked += info.file_size
        if unpacked > max_unpacked:
            raise BadRequest(f"the package unpacks to {unpacked} bytes; at most {max_unpacked}")
        names = {info.filename.rstrip("/") for info in entries}
    module = manifest.module.replace(".", "/")
    if f"{module}/__init__.py" not in names and f"{module}.py" not in names:
        raise BadRequest(
            f"the package has no module {manifest.module} (handler {manifest.handler}): "
            f"expected {module}/__init__.py or {module}.py in the zip"
        )
    digest = hashlib.sha256(data).hexdigest()
    return Package(data, digest, unpacked, len(entries))


def _check_entry(info: zipfile.ZipInfo) -> None:
    path = PurePosixPath(info.filename)
    if info.filename.startswith(("/", "\\")) or ".." in path.parts or "\\" in info.filename:
        raise BadRequest(f"the package holds an unsafe path: {info.filename!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise BadRequest(f"the package holds a symbolic link: {info.filename!r}")


def extract(cache_dir: Path, sha256: str, data: bytes) -> Path:
    """The package's files under ``cache_dir/<sha256>``, extracting them if needed.

    Extraction goes to a temporary directory renamed into place, so a directory that
    exists is always complete, and concurrent extractions of the same package are safe."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"not a SHA-256: {sha256!r}")
    target = cache_dir / sha256
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=cache_dir))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                _check_entry(info)
            archive.extractall(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return target
