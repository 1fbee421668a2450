"""Pure core: snowflake ids and merge-patch."""

from __future__ import annotations

import time

import pytest

from fleetcloud.core.errors import BadRequest
from fleetcloud.core.ids import SnowflakeGenerator, id_at, lowest_id_at, new_id, timestamp_ms
from fleetcloud.core.merge import apply_update, merge_patch, replace_at
from fleetcloud.store.channels import diff


def test_ids_are_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_ids_taken_in_blocks_are_unique_and_ordered_with_the_others() -> None:
    generator = SnowflakeGenerator(node=5)
    ids = [generator.next_id()]
    for size in (1, 0, 5_000, 3, 9_000):  # blocks past 4,096 borrow the next millisecond
        ids += generator.next_ids(size)
        ids.append(generator.next_id())
    assert len(ids) == 1 + 14_004 + 5
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_id_timestamp_is_recoverable() -> None:
    before = int(time.time() * 1000)
    snowflake = new_id()
    after = int(time.time() * 1000)
    assert before <= timestamp_ms(snowflake) <= after + 1


def test_backdated_ids_carry_their_time_and_stay_unique() -> None:
    generator = SnowflakeGenerator(node=3)
    ms = 1_700_000_000_000
    ids = [generator.id_at(ms) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert {timestamp_ms(i) for i in ids} == {ms}
    assert all(lowest_id_at(ms) <= i < lowest_id_at(ms + 1) for i in ids)
    assert timestamp_ms(id_at(ms)) == ms


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        # the examples of RFC 7396, appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: object, patch: object, expected: object) -> None:
    assert merge_patch(target, patch) == expected


def test_merge_patch_does_not_modify_its_arguments() -> None:
    target = {"a": {"b": 1}}
    patch = {"a": {"c": 2}}
    merge_patch(target, patch)
    assert target == {"a": {"b": 1}}
    assert patch == {"a": {"c": 2}}


def test_replace_path_replaces_one_subtree_and_merges_the_rest() -> None:
    current = {"ui": {"a": 1, "b": 2}, "other": {"x": 1}}
    patch = {"ui": {"c": 3}, "other": {"y": 2}}
    assert apply_update(current, patch, "ui") == {"ui": {"c": 3}, "other": {"x": 1, "y": 2}}
    assert apply_update(current, {"ui": {"a": {"deep": 1}}}, "ui.a") == {
        "ui": {"a": {"deep": 1}, "b": 2},
        "other": {"x": 1},
    }


def test_replace_at_creates_missing_objects_and_removes_on_none() -> None:
    assert replace_at({}, "a.b.c", 1) == {"a": {"b": {"c": 1}}}
    assert replace_at({"a": {"b": 1, "c": 2}}, "a.b", None) == {"a": {"c": 2}}


@pytest.mark.parametrize("path", ["", ".", "a..b", "a."])
def test_bad_replace_paths_are_refused(path: str) -> None:
    with pytest.raises(BadRequest):
        replace_at({}, path, 1)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 5}, "e": [1]}),
        ({"a": 1}, {}),
        (None, {"a": {"b": 1}}),
        ({"a": {"b": 1}}, {"a": 7}),
    ],
)
def test_diff_is_a_merge_patch_from_old_to_new(old: object, new: object) -> None:
    assert merge_patch(old, diff(old, new)) == new
