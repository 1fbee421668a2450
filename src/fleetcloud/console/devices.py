"""The devices page: every device of the organisation with its connection state, last
seen, groups and latest reading; searched and filtered on the server (``?q=``,
``?status=``, ``?group=``, ``?page=``), so it works without JavaScript."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from fleetcloud.api.gateway import owns
from fleetcloud.core.types import Channel, Principal
from fleetcloud.jobs import devices as fleet
from fleetcloud.jobs.model import Device, Group
from fleetcloud.store import channels as repo
from fleetcloud.store.agents import now_ms

from . import queries, readings
from .connection import UNKNOWN, ConnectionState, connection_state
from .pages import Reader, page, render
from .sessions import platform_of

CONNECTION_CHANNEL = "doover_connection"
PAGE_SIZE = 50
STATUSES = ("all", "online", "offline", "unknown")
MAX_QUERY = 100


@dataclass(slots=True)
class Row:
    device: Device
    connection: ConnectionState
    groups: list[Group]
    reading_channel: str | None = None
    reading: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Filters:
    q: str = ""
    status: str = "all"
    group: str = ""
    page: int = 1

    @classmethod
    def of(cls, request: Request) -> Filters:
        params = request.query_params
        status = params.get("status", "all")
        page_text = params.get("page", "1")
        return cls(
            q=params.get("q", "").strip()[:MAX_QUERY],
            status=status if status in STATUSES else "all",
            group=params.get("group", "").strip(),
            page=int(page_text) if page_text.isascii() and page_text.isdigit() else 1,
        )

    def link(self, **changes: str | int) -> str:
        values = {"q": self.q, "status": self.status, "group": self.group, "page": self.page}
        values.update(changes)
        kept = {k: v for k, v in values.items() if v not in ("", "all", 1)}
        return "/devices" + (f"?{urlencode(kept)}" if kept else "")


def visible(principal: Principal, channel: Channel | None) -> Channel | None:
    """The channel if the reader may see it (private ones only to their writers)."""
    if channel is None or not channel.is_private or owns(principal, channel.agent_id):
        return channel
    return None


def matches(row: Row, filters: Filters) -> bool:
    if filters.status != "all" and row.connection.state != filters.status:
        return False
    if filters.group and not any(str(g.id) == filters.group for g in row.groups):
        return False
    q = filters.q.lower()
    return not q or q in row.device.name.lower() or q == str(row.device.agent_id)


def latest_reading(principal: Principal, channels: Sequence[Channel]) -> Channel | None:
    """The device's most recently updated data channel that the reader may see."""
    data = [
        c
        for c in channels
        if not readings.is_reserved(c.name) and visible(principal, c) and c.last_updated
    ]
    return max(data, key=lambda c: c.last_updated or 0, default=None)


async def rows_for(request: Request, principal: Principal) -> tuple[list[Row], list[Group]]:
    store = platform_of(request).store
    organisation = principal.organisation_id
    found = await store.read(fleet.list_devices(organisation))
    groups = await store.read(fleet.list_groups(organisation))
    keys = [(d.agent_id, CONNECTION_CHANNEL) for d in found]
    connections = await store.read(repo.load_channels(keys))
    by_id = {g.id: g for g in groups}
    now = now_ms()
    rows = []
    for device in found:
        channel = visible(principal, connections.get((device.agent_id, CONNECTION_CHANNEL)))
        state = connection_state(channel.aggregate, now) if channel else UNKNOWN
        member_of = [by_id[g] for g in device.groups if g in by_id]
        rows.append(Row(device, state, member_of))
    rows.sort(key=lambda r: (r.device.name.lower(), r.device.agent_id))
    return rows, groups


async def fill_readings(request: Request, principal: Principal, rows: list[Row]) -> None:
    store = platform_of(request).store
    channels = await store.read(queries.channels_of([r.device.agent_id for r in rows]))
    for row in rows:
        channel = latest_reading(principal, channels.get(row.device.agent_id, []))
        if channel is not None:
            row.reading_channel = channel.name
            row.reading = readings.summary(channel.aggregate)


@page
async def devices_page(request: Request, reader: Reader) -> Response:
    filters = Filters.of(request)
    rows, groups = await rows_for(request, reader.principal)
    counts = {s: sum(r.connection.state == s for r in rows) for s in STATUSES[1:]}
    shown = [r for r in rows if matches(r, filters)]
    pages = max(1, -(-len(shown) // PAGE_SIZE))
    current = min(filters.page, pages)
    on_page = shown[(current - 1) * PAGE_SIZE : current * PAGE_SIZE]
    await fill_readings(request, reader.principal, on_page)
    context = {
        "reader": reader,
        "section": "devices",
        "title": "Devices",
        "rows": on_page,
        "total": len(rows),
        "matching": len(shown),
        "counts": counts,
        "groups": groups,
        "filters": filters,
        "page_number": current,
        "pages": pages,
        "now": now_ms(),
        "statuses": STATUSES,
    }
    return render(request, "devices.html", context)
