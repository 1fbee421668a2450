"""Tags for one invocation: read from the envelope, written back once at the end.

``tag_values`` is ``{app_key: {tag: value}}``. Reads see the envelope's snapshot plus this
invocation's own writes; ``flush_patch`` is the single merge-patch that carries every
change (``None`` clears a tag; an object-valued tag is patched so that keys removed from
it are removed in the channel too). Values are copied in and out, so mutating what
``get`` returned changes nothing until it is ``set`` again; a value is stored as JSON
will give it back (``{42: …}`` reads back as ``{"42": …}``).
"""

from __future__ import annotations

import copy
from typing import Any

from fleetcloud.core.merge import merge_patch
from fleetcloud.sdk.codec import normalize


def diff(old: Any, new: Any) -> Any:
    """The merge-patch that turns ``old`` into ``new``."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old or old[key] != value:
            patch[key] = diff(old.get(key), value)
    return patch


class TagBuffer:
    def __init__(self, app_key: str, tag_values: dict[str, Any]) -> None:
        self.app_key = app_key
        self._snapshot = tag_values
        own = tag_values.get(app_key)
        self._original: dict[str, Any] = dict(own) if isinstance(own, dict) else {}
        self._current: dict[str, Any] = copy.deepcopy(self._original)

    def get(self, key: str, default: Any = None, app_key: str | None = None) -> Any:
        if app_key is None or app_key == self.app_key:
            value = self._current.get(key)
        else:
            tags = self._snapshot.get(app_key)
            value = tags.get(key) if isinstance(tags, dict) else None
        return copy.deepcopy(default if value is None else value)

    def set(self, key: str, value: Any) -> None:
        if value is None:
            self._current.pop(key, None)
        else:
            self._current[key] = normalize(value, f"tag {key!r}")

    def rebase(self, tag_values: dict[str, Any]) -> None:
        """A newer ``tag_values`` (a device app reads it every loop): the new baseline, with
        this buffer's changes that were not flushed yet kept on top."""
        unflushed = diff(self._original, self._current)
        self._snapshot = tag_values
        own = tag_values.get(self.app_key)
        self._original = copy.deepcopy(own) if isinstance(own, dict) else {}
        self._current = merge_patch(copy.deepcopy(self._original), unflushed)

    def own(self) -> dict[str, Any]:
        return copy.deepcopy(self._current)

    def flush_patch(self) -> dict[str, Any] | None:
        """``{app_key: {…changes…}}``, or ``None`` if nothing changed."""
        changes = diff(self._original, self._current)
        if not changes:
            return None
        return {self.app_key: changes}

    def flushed(self) -> None:
        """The patch was written: it is the new baseline."""
        self._original = copy.deepcopy(self._current)
