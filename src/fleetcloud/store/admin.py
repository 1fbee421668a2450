"""Lookups the CLI and the demo need that the API does not."""

from __future__ import annotations

from fleetcloud.core.types import Organisation
from fleetcloud.store.ops import Fetch, Work


def find_organisation(name: str) -> Work[Organisation | None]:
    rows = yield Fetch(
        "SELECT id, name, agent_id FROM organisations WHERE name = ? ORDER BY id LIMIT 1",
        (name,),
    )
    if not rows:
        return None
    return Organisation(int(rows[0][0]), str(rows[0][1]), int(rows[0][2]))


def organisation_count() -> Work[int]:
    rows = yield Fetch("SELECT count(*) FROM organisations")
    return int(rows[0][0])
