"""Sharding decisions: a Sync's shard (label or stable hash), which member holds which shard,
and the Lease names."""

import re
from collections import Counter
from itertools import combinations

import pytest

from aioreconcile.engine.sharding import (
    SHARD_LABEL,
    Placement,
    assign,
    fnv1a_64,
    member_lease_name,
    place,
    shard_lease_name,
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # The published FNV-1a 64-bit test vectors.
        (b"", 0xCBF29CE484222325),
        (b"a", 0xAF63DC4C8601EC8C),
        (b"foobar", 0x85944171F73967E8),
    ],
)
def test_fnv1a_64_matches_the_reference_vectors(data: bytes, expected: int) -> None:
    assert fnv1a_64(data) == expected


@pytest.mark.parametrize(
    ("labels", "shards", "expected"),
    [
        (None, 1, Placement(0)),
        ({}, 4, Placement(fnv1a_64(b"team-a/app") % 4)),
        ({"other": "x"}, 4, Placement(fnv1a_64(b"team-a/app") % 4)),
        ({SHARD_LABEL: "0"}, 4, Placement(0)),
        ({SHARD_LABEL: "3"}, 4, Placement(3)),
    ],
)
def test_a_sync_is_placed_by_its_label_else_by_the_hash_of_namespace_and_name(
    labels: dict[str, str] | None, shards: int, expected: Placement
) -> None:
    assert place("team-a", "app", labels, shards) == expected


@pytest.mark.parametrize("value", ["4", "-1", "01", "one", "", " 1", "\uff11"])
def test_a_bad_shard_label_keeps_the_hash_shard_and_names_the_label(value: str) -> None:
    placement = place("team-a", "app", {SHARD_LABEL: value}, 4)
    assert placement.shard == fnv1a_64(b"team-a/app") % 4
    assert placement.problem is not None
    assert f"metadata.labels[{SHARD_LABEL}]" in placement.problem
    assert "0..3" in placement.problem


def test_placement_is_stable_and_spreads_evenly() -> None:
    first = [place("ns", f"sync-{i}", None, 3).shard for i in range(3000)]
    again = [place("ns", f"sync-{i}", None, 3).shard for i in range(3000)]
    assert first == again
    counts = Counter(first)
    assert all(900 <= counts[shard] <= 1100 for shard in range(3)), counts


def test_no_shards_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        place("ns", "app", None, 0)


@pytest.mark.parametrize(
    ("shards", "members"),
    [
        (1, ["a"]),
        (3, ["a", "b", "c"]),
        (3, ["a", "b"]),
        (3, ["a"]),
        (4, ["a", "b", "c"]),
        (16, ["r0", "r1", "r2", "r3", "r4"]),
        (2, ["a", "b", "c"]),
    ],
)
def test_every_shard_has_one_live_owner_and_no_member_more_than_its_share(
    shards: int, members: list[str]
) -> None:
    owners = assign(shards, members)
    assert sorted(owners) == list(range(shards))
    assert set(owners.values()) <= set(members)
    load = Counter(owners.values())
    assert max(load.values()) == -(-shards // len(members))
    # The same answer whatever order the members were seen in.
    assert assign(shards, list(reversed(members))) == owners


def test_no_member_means_no_owner() -> None:
    assert assign(3, []) == {}


def test_three_shards_on_three_members_always_give_each_member_one() -> None:
    for trial in range(300):
        members = [f"pod-{trial}-{i}" for i in range(3)]
        assert sorted(Counter(assign(3, members).values()).values()) == [1, 1, 1]


def test_a_member_leaving_moves_only_its_own_shards_when_the_others_have_room() -> None:
    """Rendezvous: the survivors keep what they held; only the dead member's shards move."""
    members = [f"r{i}" for i in range(4)]
    before = assign(8, members)
    for gone in members:
        survivors = [m for m in members if m != gone]
        after = assign(8, survivors)
        moved = {s for s in before if before[s] != after[s]}
        kept_elsewhere = moved - {s for s, m in before.items() if m == gone}
        # Bounded loads may move a few more to keep the spread even; never most of them.
        assert len(kept_elsewhere) <= 2, (gone, before, after)


def test_a_member_joining_takes_shards_from_others_but_not_all_of_them() -> None:
    for old in combinations([f"r{i}" for i in range(4)], 3):
        before = assign(12, list(old))
        after = assign(12, [*old, "new"])
        moved = [s for s in before if before[s] != after[s]]
        assert Counter(after.values())["new"] == 3
        assert len(moved) <= 6, (before, after)


def test_lease_names_are_valid_object_names() -> None:
    name = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    assert shard_lease_name("aioreconcile", 7) == "aioreconcile-shard-7"
    member = member_lease_name("aioreconcile", "Host_1A2b.local")
    assert name.match(member)
    assert member.startswith("aioreconcile-member-")
    assert member != member_lease_name("aioreconcile", "Host_1A2b.locaL")


def test_a_member_leaving_moves_its_own_shards_only_when_the_holders_are_known() -> None:
    """Sticky: a survivor keeps the shard it holds, whatever the bound would have reshuffled
    (3 shards on 3 members, one killed: only its shard moves, for every member naming)."""
    reshuffled = 0
    for trial in range(200):
        members = [f"pod-{trial}-{i}" for i in range(3)]
        holders = assign(3, members)
        for gone in members:
            survivors = [m for m in members if m != gone]
            after = assign(3, survivors, holders)
            moved = {s for s in holders if holders[s] != after[s]}
            assert moved == {s for s, m in holders.items() if m == gone}, (holders, after)
            assert max(Counter(after.values()).values()) == 2
            if {s for s in holders if holders[s] != assign(3, survivors)[s]} != moved:
                reshuffled += 1
    assert reshuffled > 0  # without the holders, the bound does move a survivor's shard


@pytest.mark.parametrize(
    ("shards", "members", "holders", "expected", "kept"),
    [
        # A member over its share (a newcomer joined) keeps the most decided of its shards
        # and the other goes to the newcomer, not back to it.
        (3, ["a", "b", "new"], {0: "a", 1: "a", 2: "b"}, {"a": 1, "b": 1, "new": 1}, 2),
        # A holder that is no live member (killed) keeps nothing.
        (2, ["a"], {0: "a", 1: "dead"}, {"a": 2}, 1),
        # No holder yet: plain rendezvous with bounded loads.
        (4, ["a", "b"], {}, {"a": 2, "b": 2}, 0),
    ],
)
def test_holders_are_kept_within_the_bound(
    shards: int,
    members: list[str],
    holders: dict[int, str],
    expected: dict[str, int],
    kept: int,
) -> None:
    owners = assign(shards, members, holders)
    assert sorted(owners) == list(range(shards))
    assert dict(Counter(owners.values())) == expected
    assert sum(1 for s, m in holders.items() if owners[s] == m) == kept


def test_a_newcomer_takes_only_what_is_over_the_holders_share() -> None:
    for old in combinations([f"r{i}" for i in range(4)], 3):
        holders = assign(12, list(old))
        after = assign(12, [*old, "new"], holders)
        moved = [s for s in holders if holders[s] != after[s]]
        assert Counter(after.values())["new"] == 3
        assert len(moved) == 3, (holders, after)
        assert all(after[s] == "new" for s in moved), (holders, after)
