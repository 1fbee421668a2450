"""Tags: per-app key/value state kept in an agent's ``tag_values`` channel.

The channel's aggregate is ``{app_key: {tag: value}}``. Setting tags merge-patches the
app's part (a ``None`` value clears that tag) and, like any publish, appends the change
to the channel's history and emits its events, so tag changes are visible live.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetcloud.core.errors import BadRequest
from fleetcloud.store.channels import PublishItem, get_channel, publish
from fleetcloud.store.ops import Work

TAG_CHANNEL = "tag_values"


def get_tags(agent_id: int, app_key: str) -> Work[dict[str, Any]]:
    """All of one app's tags on ``agent_id`` ({} if it has none)."""
    channel = yield from get_channel(agent_id, TAG_CHANNEL)
    aggregate = channel.aggregate if channel is not None else None
    tags = aggregate.get(app_key) if isinstance(aggregate, dict) else None
    return dict(tags) if isinstance(tags, dict) else {}


def get_tag(agent_id: int, app_key: str, tag: str, default: Any = None) -> Work[Any]:
    tags = yield from get_tags(agent_id, app_key)
    value = tags.get(tag)
    return default if value is None else value


def set_tags(
    agent_id: int, app_key: str, values: Mapping[str, Any], author_id: int
) -> Work[dict[str, Any]]:
    """Merge ``values`` into the app's tags (``None`` clears a tag); returns the app's tags."""
    if not app_key:
        raise BadRequest("an app key is required to set tags")
    if not values:
        return (yield from get_tags(agent_id, app_key))
    item = PublishItem(agent_id, TAG_CHANNEL, {app_key: dict(values)}, author_id)
    [result] = yield from publish([item])
    if result.error is not None:
        raise BadRequest(result.error)
    return (yield from get_tags(agent_id, app_key))
