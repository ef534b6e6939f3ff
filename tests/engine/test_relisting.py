"""Relisting: the events made up after 410 Gone are exactly the differences cache vs listing."""

import pytest

from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.relisting import (
    ListingDiff,
    diff_listing,
    relist_events,
    synthetic_events,
    tombstone,
)

A = ObjectRef("", "ConfigMap", "shop", "a", "v1")
B = ObjectRef("", "ConfigMap", "shop", "b", "v1")
C = ObjectRef("", "ConfigMap", "shop", "c", "v1")
ROLE = ObjectRef("rbac.authorization.k8s.io", "ClusterRole", "", "reader", "v1")


def body(ref: ObjectRef, rv: str) -> JsonObject:
    metadata = {"name": ref.name, "namespace": ref.namespace, "resourceVersion": rv}
    return {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": metadata, "data": {}}


@pytest.mark.parametrize(
    ("cached", "listed", "expected"),
    [
        pytest.param({}, {}, ListingDiff(), id="nothing-either-side"),
        pytest.param({A: "1", B: "2"}, {A: "1", B: "2"}, ListingDiff(), id="unchanged"),
        pytest.param({}, {B: "2", A: "1"}, ListingDiff(added=(A, B)), id="all-new-sorted"),
        pytest.param({A: "1"}, {A: "5"}, ListingDiff(modified=(A,)), id="modified"),
        pytest.param({A: "1", ROLE: "3"}, {}, ListingDiff(deleted=(A, ROLE)), id="all-gone"),
        pytest.param(
            {A: "1", B: "2"},
            {A: "7", C: "8"},
            ListingDiff(added=(C,), modified=(A,), deleted=(B,)),
            id="one-of-each",
        ),
        # Opaque: an older-looking version is still a change (etcd restored from a backup).
        pytest.param({A: "9"}, {A: "10"}, ListingDiff(modified=(A,)), id="rv-compared-as-text"),
        pytest.param({A: "10"}, {A: "9"}, ListingDiff(modified=(A,)), id="rv-never-ordered"),
    ],
)
def test_diff_listing_reports_what_changed_between_cache_and_listing(
    cached: dict[ObjectRef, str], listed: dict[ObjectRef, str], expected: ListingDiff
) -> None:
    assert diff_listing(cached, listed) == expected


def test_diff_ignores_the_api_version_an_object_was_seen_in() -> None:
    cached = {ObjectRef("autoscaling", "HorizontalPodAutoscaler", "shop", "web", "v2beta2"): "4"}
    listed = {ObjectRef("autoscaling", "HorizontalPodAutoscaler", "shop", "web", "v2"): "4"}

    assert not diff_listing(cached, listed)


def test_synthetic_events_carry_listed_bodies_and_tombstones_for_deletions() -> None:
    diff = ListingDiff(added=(C,), modified=(A,), deleted=(B, ROLE))
    bodies = {A: body(A, "7"), C: body(C, "8")}

    events = synthetic_events(diff, bodies)

    assert events == [
        WatchEvent(EventType.ADDED, C, bodies[C], synthetic=True),
        WatchEvent(EventType.MODIFIED, A, bodies[A], synthetic=True),
        WatchEvent(EventType.DELETED, B, tombstone(B), synthetic=True),
        WatchEvent(EventType.DELETED, ROLE, tombstone(ROLE), synthetic=True),
    ]
    assert events[1].resource_version == "7"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        pytest.param(
            B,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "b", "namespace": "shop"},
            },
            id="namespaced",
        ),
        pytest.param(
            ROLE,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "reader"},
            },
            id="cluster-scoped",
        ),
    ],
)
def test_tombstone_is_only_the_identity(ref: ObjectRef, expected: JsonObject) -> None:
    assert tombstone(ref) == expected
    assert ObjectRef.of(tombstone(ref)) == ref


def test_relist_events_reads_resource_versions_from_the_bodies() -> None:
    listed = [(A, body(A, "1")), (C, body(C, "3"))]

    events = relist_events({A: "1", B: "2"}, listed)

    assert [(e.type, e.ref) for e in events] == [
        (EventType.ADDED, C),
        (EventType.DELETED, B),
    ]
    assert all(e.synthetic for e in events)
