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
from aioreconcile.engine.planning import as_stored, stamp

# A Deployment written the way people write it, and the same object as the server stored it:
# quantities normalised (1 -> "1", 0.5 -> "500m"), ports keyed with their defaulted protocol,
# defaults filled in, status and other managers' fields beside ours.
WRITTEN = stamp(
    {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "nginx:1.27",
                            "ports": [{"containerPort": 80}],
                            "resources": {
                                "limits": {"cpu": 1, "memory": "1Gi"},
                                "requests": {"cpu": 0.5},
                            },
                        }
                    ]
                },
            },
        },
    },
    sync="shop",
    revision="a" * 40,
    traceparent=None,
)
OURS: dict[str, Any] = {
    "manager": "aioreconcile",
    "operation": "Apply",
    "apiVersion": "apps/v1",
    "time": "2026-11-28T00:00:00Z",
    "fieldsType": "FieldsV1",
    "fieldsV1": {
        "f:metadata": {
            "f:labels": {"f:app.kubernetes.io/managed-by": {}, "f:aioreconcile.dev/sync": {}},
            "f:annotations": {"f:aioreconcile.dev/revision": {}},
        },
        "f:spec": {
            "f:selector": {},
            "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:containers": {
                        'k:{"name":"web"}': {
                            ".": {},
                            "f:image": {},
                            "f:name": {},
                            "f:ports": {
                                'k:{"containerPort":80,"protocol":"TCP"}': {
                                    ".": {},
                                    "f:containerPort": {},
                                }
                            },
                            "f:resources": {
                                "f:limits": {"f:cpu": {}, "f:memory": {}},
                                "f:requests": {"f:cpu": {}},
                            },
                        }
                    }
                },
            },
        },
    },
}
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


def as_the_server_stored_it(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(WRITTEN)
    obj["metadata"]["resourceVersion"] = changes.pop("rv", "100")
    obj["metadata"]["managedFields"] = [OURS, *changes.pop("others", [])]
    spec = obj["spec"]
    spec["replicas"] = changes.pop("replicas", 1)
    spec["strategy"] = {"type": "RollingUpdate"}
    container = spec["template"]["spec"]["containers"][0]
    container["ports"] = [{"containerPort": 80, "protocol": "TCP"}]
    container["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}
    container["imagePullPolicy"] = "IfNotPresent"
    if "image" in changes:
        container["image"] = changes.pop("image")
    for edit in changes.pop("edits", []):
        edit(obj)
    assert not changes, changes
    return obj


STORED_OBJECT = as_the_server_stored_it()
STORED = as_stored(STORED_OBJECT, OURS["fieldsV1"])
DESIRED = WRITTEN


def event(obj: dict[str, Any], kind: EventType = EventType.MODIFIED) -> WatchEvent:
    return WatchEvent(kind, ObjectRef.of(obj), obj)


def _status(obj: dict[str, Any]) -> None:
    obj["status"] = {"observedGeneration": 2, "replicas": 1, "readyReplicas": 1}
    obj["metadata"]["managedFields"].append(
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status"}
    )


def _foreign_annotation(obj: dict[str, Any]) -> None:
    obj["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"


def _sidecar(obj: dict[str, Any]) -> None:
    containers = obj["spec"]["template"]["spec"]["containers"]
    containers.insert(0, {"name": "istio-proxy", "image": "proxy:1"})


def _new_revision_stamp(obj: dict[str, Any]) -> None:
    obj["metadata"]["annotations"]["aioreconcile.dev/revision"] = "b" * 40


def _cpu(value: object) -> Any:
    def edit(obj: dict[str, Any]) -> None:
        obj["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = value

    return edit


def _drop_label(label: str) -> Any:
    def edit(obj: dict[str, Any]) -> None:
        del obj["metadata"]["labels"][label]

    return edit


def _drop_port(obj: dict[str, Any]) -> None:
    obj["spec"]["template"]["spec"]["containers"][0]["ports"] = []


@pytest.mark.parametrize(
    ("obj", "kind", "our_rv", "expected", "fields"),
    [
        pytest.param(STORED_OBJECT, EventType.MODIFIED, None, DriftKind.NONE, (), id="identical"),
        pytest.param(
            as_the_server_stored_it(rv="7"),
            EventType.MODIFIED,
            "7",
            DriftKind.NONE,
            (),
            id="our-own-write",
        ),
        pytest.param(
            as_the_server_stored_it(edits=[_status]),
            EventType.MODIFIED,
            None,
            DriftKind.NONE,
            (),
            id="status-written-by-another-manager",
        ),
        pytest.param(
            as_the_server_stored_it(edits=[_foreign_annotation]),
            EventType.MODIFIED,
            None,
            DriftKind.NONE,
            (),
            id="annotation-we-do-not-declare",
        ),
        pytest.param(
            as_the_server_stored_it(replicas=7, others=[HPA]),
            EventType.MODIFIED,
            None,
            DriftKind.NONE,
            (),
            id="scaled-by-someone-else",
        ),
        pytest.param(
            as_the_server_stored_it(edits=[_sidecar]),
            EventType.MODIFIED,
            None,
            DriftKind.NONE,
            (),
            id="sidecar-injected-before-our-container",
        ),
        pytest.param(
            as_the_server_stored_it(edits=[_new_revision_stamp]),
            EventType.MODIFIED,
            None,
            DriftKind.NONE,
            (),
            id="revision-stamp-value",
        ),
        pytest.param(
            as_the_server_stored_it(image="evil:1", others=[KUBECTL]),
            EventType.MODIFIED,
            None,
            DriftKind.CHANGED,
            ("spec.template.spec.containers[name=web].image",),
            id="declared-field-edited",
        ),
        pytest.param(
            as_the_server_stored_it(edits=[_cpu("2")]),
            EventType.MODIFIED,
            None,
            DriftKind.CHANGED,
            ("spec.template.spec.containers[name=web].resources.limits.cpu",),
            id="declared-quantity-edited",
        ),
        pytest.param(
            as_the_server_stored_it(edits=[_drop_port]),
            EventType.MODIFIED,
            None,
            DriftKind.CHANGED,
            ("spec.template.spec.containers[name=web].ports[containerPort=80,protocol=TCP]",),
            id="declared-port-removed",
        ),
        pytest.param(
            as_the_server_stored_it(edits=[_drop_label("aioreconcile.dev/sync")]),
            EventType.MODIFIED,
            None,
            DriftKind.CHANGED,
            ("metadata.labels.aioreconcile.dev/sync",),
            id="sync-label-removed",
        ),
        pytest.param(
            as_the_server_stored_it(edits=[_drop_label("app.kubernetes.io/managed-by")]),
            EventType.DELETED,
            None,
            DriftKind.DELETED,
            (),
            id="managed-by-removed-watch-says-deleted",
        ),
        pytest.param(STORED_OBJECT, EventType.DELETED, "100", DriftKind.DELETED, (), id="deleted"),
    ],
)
def test_verdicts_are_judged_on_what_the_server_stored(
    obj: dict[str, Any],
    kind: EventType,
    our_rv: str | None,
    expected: DriftKind,
    fields: tuple[str, ...],
) -> None:
    verdict = judge(event(obj, kind), DESIRED, stored=STORED, our_resource_version=our_rv)

    assert verdict.kind is expected
    assert verdict.fields == fields


def test_changed_verdict_names_fields_and_writer() -> None:
    verdict = judge(
        event(as_the_server_stored_it(image="evil:1", others=[KUBECTL])),
        DESIRED,
        stored=STORED,
        our_resource_version=None,
    )

    assert verdict.writers == ("kubectl-edit",)
    assert "kubectl-edit" in verdict.reason
    assert "containers[name=web].image" in verdict.reason


def test_reconcile_disabled_annotation_opts_out() -> None:
    obj = as_the_server_stored_it(image="evil:1")
    obj["metadata"]["annotations"]["aioreconcile.dev/reconcile"] = "disabled"

    verdict = judge(event(obj), DESIRED, stored=STORED, our_resource_version=None)

    assert verdict.kind is DriftKind.OPTED_OUT


def test_object_no_sync_declares_is_not_drift() -> None:
    verdict = judge(event(STORED_OBJECT), None, stored=None, our_resource_version=None)

    assert verdict.kind is DriftKind.NONE


def test_without_a_stored_form_only_a_deletion_counts() -> None:
    edited = as_the_server_stored_it(image="evil:1")

    changed = judge(event(edited), DESIRED, stored=None, our_resource_version=None)
    deleted = judge(
        event(edited, EventType.DELETED), DESIRED, stored=None, our_resource_version=None
    )

    assert (changed.kind, deleted.kind) == (DriftKind.NONE, DriftKind.DELETED)


def test_foreign_writers_most_recent_first() -> None:
    assert foreign_writers(as_the_server_stored_it(others=[KUBECTL, HPA])) == (
        "kube-controller-manager",
        "kubectl-edit",
    )


def test_differing_fields_of_a_deleted_object_is_the_whole_object() -> None:
    assert differing_fields(STORED, None) == ["."]


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
