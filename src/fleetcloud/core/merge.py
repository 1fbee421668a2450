"""RFC 7396 JSON merge-patch, and replacing one subtree by a dotted path.

``merge_patch(target, patch)``: objects merge recursively, a ``null`` in the patch deletes
the key, and anything else (lists, strings, numbers) replaces what was there. Neither
argument is modified; the result shares untouched subtrees with ``target``.
"""

from __future__ import annotations

from typing import Any

from fleetcloud.core.errors import BadRequest

JSON = Any


def merge_patch(target: JSON, patch: JSON) -> JSON:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merge_patch(result.get(key), value)
        else:
            result[key] = value
    return result


def split_path(path: str) -> list[str]:
    parts = path.split(".")
    if not path or any(not part for part in parts):
        raise BadRequest(f"replace path {path!r} is not a dotted path like 'a.b.c'")
    return parts


def replace_at(target: JSON, path: str, value: JSON) -> JSON:
    """``target`` with the subtree at ``path`` replaced by ``value`` (``None`` removes it).

    Missing objects along the path are created; a non-object in the way is replaced.
    """
    parts = split_path(path)
    return _replace(target, parts, value)


def _replace(target: JSON, parts: list[str], value: JSON) -> JSON:
    result = dict(target) if isinstance(target, dict) else {}
    head, rest = parts[0], parts[1:]
    if rest:
        result[head] = _replace(result.get(head), rest, value)
    elif value is None:
        result.pop(head, None)
    else:
        result[head] = value
    return result


def pick(data: JSON, path: str) -> JSON:
    """The value at dotted ``path`` inside ``data``, or ``None``."""
    node = data
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def apply_update(current: JSON, patch: JSON, replace: str | None = None) -> JSON:
    """What an aggregate becomes after a PATCH: merge, or replace the subtree at ``replace``.

    With ``replace``, the subtree of ``patch`` at that path replaces the same subtree of
    ``current`` wholesale, and the rest of ``patch`` is merged as usual.
    """
    if replace is None:
        return merge_patch(current, patch)
    parts = split_path(replace)
    subtree = pick(patch, replace)
    trimmed = _replace(patch, parts, None) if isinstance(patch, dict) else patch
    merged = merge_patch(current, trimmed)
    return _replace(merged, parts, subtree)
