"""What a page shows of channel data: reserved channels, chartable fields, short
summaries and readable JSON (pure)."""

from __future__ import annotations

from typing import Any

import orjson

RESERVED = frozenset(
    {
        "tag_values",
        "ui_state",
        "ui_cmds",
        "deployment_config",
        "significantEvent",
        "doover_connection",
        "jobs",
        "commands",
    }
)
"""Channels with a fixed meaning (DESIGN.md); the rest hold the device's own data."""
MAX_DEPTH = 3


def is_reserved(name: str) -> bool:
    return name in RESERVED or name.startswith("dv-proc-inv-")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_fields(data: Any, limit: int = 6, prefix: str = "", depth: int = 0) -> list[str]:
    """Dotted paths of the numbers in ``data`` (depth first, in key order): what a
    time-series chart can plot."""
    if not isinstance(data, dict) or depth >= MAX_DEPTH:
        return []
    found: list[str] = []
    for key, value in data.items():
        if len(found) >= limit:
            break
        path = f"{prefix}{key}"
        if _number(value) and "." not in str(key):
            found.append(path)
        elif isinstance(value, dict):
            found += numeric_fields(value, limit - len(found), f"{path}.", depth + 1)
    return found


def scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int | str):
        return str(value)
    return compact(value)


def summary(data: Any, limit: int = 4) -> list[tuple[str, str]]:
    """The first few top-level values, for a one-line view of a reading."""
    if not isinstance(data, dict):
        return [] if data is None else [("value", scalar(data))]
    items = [(str(k), v) for k, v in data.items() if not isinstance(v, dict | list)]
    return [(key, scalar(value)) for key, value in items[:limit]]


def compact(data: Any) -> str:
    return orjson.dumps(data).decode()


def pretty(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
