"""Apps that ``fleetcloud serve --demo`` deploys, shipped as source with fleetcloud.

``demo_farm`` is an ordinary processor project: it imports only ``fleetcloud.sdk``, and
``package("demo_farm")`` zips it the way ``fleetcloud app build`` lays a package out
(``src/demo_farm/…``; it has no dependencies, so nothing is installed), ready for the
apps runtime. The zip is the same bytes for the same source, so a restarted demo finds
its apps up to date instead of deploying a new version each time.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from importlib import resources
from typing import Any

from fleetcloud.demo_apps.demo_farm import config as demo_farm

PROJECTS: dict[str, Callable[[], dict[str, Any]]] = {"demo_farm": demo_farm.doover_config}

EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed file times: the same source makes the same zip


def package(name: str) -> bytes:
    """``package.zip`` of the demo app project ``name`` (its modules under ``src/name/``)."""
    if name not in PROJECTS:
        raise ValueError(f"there is no demo app project {name!r}")
    source = resources.files(__package__).joinpath(name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(source.iterdir(), key=lambda entry: entry.name):
            if item.is_file() and item.name.endswith(".py"):
                info = zipfile.ZipInfo(f"src/{name}/{item.name}", EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, item.read_bytes())
    return buffer.getvalue()


def doover_config(name: str) -> dict[str, Any]:
    """The project's ``doover_config.json`` (its ``config`` module writes it)."""
    if name not in PROJECTS:
        raise ValueError(f"there is no demo app project {name!r}")
    return PROJECTS[name]()
