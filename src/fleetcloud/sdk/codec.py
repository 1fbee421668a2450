"""JSON for what an app sends: the wire format, and the same normalisation in memory.

Integer dict keys become strings (as ``json.dumps`` does; a channel is JSON, so a tag
written with ``{42: …}`` reads back as ``{"42": …}``), datetimes become RFC 3339 text.
Anything else that JSON cannot carry fails at the call that tried, with the reason.
"""

from __future__ import annotations

from typing import Any

import orjson

from fleetcloud.sdk.errors import NotJsonSerializable

OPTIONS = orjson.OPT_NON_STR_KEYS


def encode(value: Any, what: str = "the value") -> bytes:
    try:
        return orjson.dumps(value, option=OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise NotJsonSerializable(f"{what} cannot be sent as JSON: {exc}") from exc


def normalize(value: Any, what: str = "the value") -> Any:
    """``value`` as it will read back from a channel."""
    return orjson.loads(encode(value, what))
