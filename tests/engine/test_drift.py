"""Drift is judged on what we declare, never on fields other writers own."""

import copy
from typing import Any

import pytest

from aioreconcile.engine.drift import (
    DriftKind,
    FightGuard,
    differing_fields,
    foreign_writers,
    judge,
)
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.model import ObjectRef
from aioreconcile.engine.planning import stamp

DESIRED = stamp(
    {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
    },
    sync="shop",
    revision="a" * 40,
    traceparent=None,
)
OUR_FIELDS = {
    "f:metadata": {
        "f:labels": {"f:app.kubernetes.io/managed-by": {}, "f:aioreconcile.dev/sync": {}},
        "f:annotations": {"f:aioreconcile.dev/revision": {}},
    },
    "f:spec": {
        "f:template": {
            "f:spec": {"f:containers": {'k:{"name":"web"}': {".": {}, "f:image": {}, "f:name": {}}}}
        }
    },
}


def live(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(DESIRED)
    obj["metadata"]["resourceVersion"] = changes.pop("rv", "100")
    obj["metadata"]["managedFields"] = [
        {
            "manager": "aioreconcile",
            "operation": "Apply",
            "apiVersion": "apps/v1",
            "time": "2026-11-28T00:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": OUR_FIELDS,
        },
        *changes.pop("others", []),
    ]
    obj["spec"]["replicas"] = changes.pop("replicas", 1)
    if "image" in changes:
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = changes.pop("image")
    return obj


def event(obj: dict[str, Any], kind: EventType = EventType.MODIFIED) -> WatchEvent:
    return WatchEvent(kind, ObjectRef.of(obj), obj)


KUBECTL = {
    "manager": "kubectl-edit",
    "operation": "Update",
    "apiVersion": "apps/v1",
    "time": "2026-11-28T00:01:00Z",
    "fieldsType": "FieldsV1",
    "fieldsV1": {},
}
HPA = {
    "manager": "kube-controller-manager",
    "operation": "Update",
    "apiVersion": "apps/v1",
    "time": "2026-11-28T00:02:00Z",
    "fieldsType": "FieldsV1",
    "fieldsV1": {"f:spec": {"f:replicas": {}}},
}


@pytest.mark.parametrize(
    ("obj", "kind", "our_rv", "expected"),
    [
        pytest.param(live(), EventType.MODIFIED, None, DriftKind.NONE, id="identical"),
        pytest.param(live(rv="7"), EventType.MODIFIED, "7", DriftKind.NONE, id="our-own-write"),
        pytest.param(
            live(image="evil:1", others=[KUBECTL]),
            EventType.MODIFIED,
            None,
            DriftKind.CHANGED,
            id="declared-field-edited",
        ),
        pytest.param(
            live(replicas=7, others=[HPA]),
            EventType.MODIFIED,
            None,
            DriftKind.NONE,
            id="scaled-by-someone-else",
        ),
        pytest.param(live(), EventType.DELETED, "100", DriftKind.DELETED, id="deleted"),
    ],
)
def test_verdicts(
    obj: dict[str, Any], kind: EventType, our_rv: str | None, expected: DriftKind
) -> None:
    assert judge(event(obj, kind), DESIRED, our_resource_version=our_rv).kind is expected


def test_changed_verdict_names_fields_and_writer() -> None:
    verdict = judge(
        event(live(image="evil:1", others=[KUBECTL])), DESIRED, our_resource_version=None
    )

    assert verdict.fields == ("spec.template.spec.containers",)
    assert verdict.writers == ("kubectl-edit",)
    assert "kubectl-edit" in verdict.reason


def test_reconcile_disabled_annotation_opts_out() -> None:
    obj = live(image="evil:1")
    obj["metadata"].setdefault("annotations", {})["aioreconcile.dev/reconcile"] = "disabled"

    assert judge(event(obj), DESIRED, our_resource_version=None).kind is DriftKind.OPTED_OUT


def test_object_no_sync_declares_is_not_drift() -> None:
    assert judge(event(live()), None, our_resource_version=None).kind is DriftKind.NONE


def test_foreign_writers_most_recent_first() -> None:
    assert foreign_writers(live(others=[KUBECTL, HPA])) == (
        "kube-controller-manager",
        "kubectl-edit",
    )


def test_differing_fields_skips_volatile_stamps() -> None:
    other = copy.deepcopy(DESIRED)
    other["metadata"]["annotations"]["aioreconcile.dev/revision"] = "b" * 40

    assert differing_fields(DESIRED, other) == []


def test_fight_guard_pauses_after_limit_and_doubles_the_cooldown() -> None:
    guard = FightGuard(limit=3, window_s=10, cooldown_s=5, cooldown_cap_s=100)
    ref = ObjectRef("apps", "Deployment", "shop", "web")

    allowed = [guard.allow(ref, now=t)[0] for t in (0.0, 1.0, 2.0)]
    blocked, wait = guard.allow(ref, now=3.0)
    still_blocked, _ = guard.allow(ref, now=7.0)
    after_pause = [guard.allow(ref, now=t)[0] for t in (8.1, 8.2, 8.3)]
    second_block, second_wait = guard.allow(ref, now=8.4)

    assert allowed == [True, True, True]
    assert (blocked, wait) == (False, 5)
    assert still_blocked is False
    assert after_pause == [True, True, True]
    assert (second_block, second_wait) == (False, 10)


def test_fight_guard_forgets_old_heals_outside_the_window() -> None:
    guard = FightGuard(limit=2, window_s=10)
    ref = ObjectRef("", "ConfigMap", "ns", "c")

    results = [guard.allow(ref, now=t)[0] for t in (0.0, 5.0, 20.0, 25.0)]

    assert results == [True, True, True, True]
