"""``fleetcloud app build``: ``package.zip`` from a project, as the seed's ``build.sh`` makes it.

With ``uv`` and a ``uv.lock``: the locked dependencies are exported (without dev
dependencies, the project itself or ``fleetcloud``, which the runtime provides) and
installed into ``packages_export/`` for this machine's platform and Python; their files
go at the zip's root, then the ``src/`` tree. A project without dependencies needs
neither uv nor a lock.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from fleetcloud.core.errors import FleetError

EXPORT = "packages_export"
SKIP_DIRS = {"__pycache__"}
TIMEOUT = 600


class BuildError(FleetError):
    pass


def dependencies(project: Path) -> list[str]:
    path = project / "pyproject.toml"
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{path} is not valid TOML: {exc}") from exc
    found = data.get("project", {}).get("dependencies", [])
    return [str(d) for d in found if not str(d).lower().startswith("fleetcloud")]


def _run(command: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{command[0]} {command[1]} failed: {exc}") from exc
    if done.returncode != 0:
        raise BuildError(f"{' '.join(command[:3])} failed:\n{done.stderr.strip()}")


def install_dependencies(project: Path, uv: str) -> None:
    """Export the lock to ``requirements.txt`` and install it into ``packages_export``."""
    requirements = project / "requirements.txt"
    export = [uv, "export", "--frozen", "--no-dev", "--no-editable", "--no-emit-project"]
    _run([*export, "--no-emit-package", "fleetcloud", "--quiet", "-o", str(requirements)], project)
    wanted = [
        line for line in requirements.read_text().splitlines() if line.strip()[:1] not in "#-"
    ]
    if not wanted:
        return
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = ["--python", python, "--target", str(project / EXPORT)]
    if sys.platform == "linux":
        target += ["--python-platform", f"{platform.machine()}-manylinux2014"]
    install = [
        uv,
        "pip",
        "install",
        "--no-deps",
        "--no-installer-metadata",
        "--no-compile-bytecode",
    ]
    _run([*install, "--quiet", *target, "-r", str(requirements)], project)


def _add_tree(archive: zipfile.ZipFile, directory: Path, prefix: Path) -> None:
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            path = Path(root) / name
            archive.write(path, (prefix / path.relative_to(directory)).as_posix())


def build(project: Path, *, uv: str | None = None) -> Path:
    """Write ``project/package.zip`` and return its path."""
    project = project.resolve()
    if not (project / "src").is_dir():
        raise BuildError(f"{project} has no src/ directory: is it an app project?")
    export = project / EXPORT
    shutil.rmtree(export, ignore_errors=True)
    export.mkdir()
    uv = uv or shutil.which("uv")
    if (project / "uv.lock").exists() and uv:
        install_dependencies(project, uv)
    elif dependencies(project):
        why = "uv is not on PATH" if not uv else "there is no uv.lock (run `uv lock`)"
        raise BuildError(f"{project.name} has dependencies, but {why}")
    package = project / "package.zip"
    package.unlink(missing_ok=True)
    with zipfile.ZipFile(package, "w", zipfile.ZIP_DEFLATED) as archive:
        _add_tree(archive, export, Path())
        _add_tree(archive, project / "src", Path("src"))
    return package
