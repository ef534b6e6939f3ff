"""What the server stored of our fields, the one comparison of declared values, and the guards an
apply checks first (reconcile disabled, another sync's object, immutable fields). Pure tables."""

from typing import Any

import pytest

from aioreconcile.engine.changeset import Action
from aioreconcile.engine.errors import ApiError
from aioreconcile.engine.model import ObjectRef
from aioreconcile.engine.planning import (
    as_stored,
    differences,
    immutable_error,
    immutable_fields,
    may_recreate,
    our_fields,
    refusal,
)

PORT_80 = 'k:{"containerPort":80,"protocol":"TCP"}'
FIELDS: dict[str, Any] = {
    "f:metadata": {
        "f:labels": {"f:aioreconcile.dev/sync": {}},
        "f:annotations": {"f:aioreconcile.dev/revision": {}},
        "f:finalizers": {'v:"example.dev/cleanup"': {}},
    },
    "f:spec": {
        "f:selector": {},
        "f:containers": {
            'k:{"name":"web"}': {
                ".": {},
                "f:name": {},
                "f:image": {},
                "f:ports": {PORT_80: {".": {}, "f:containerPort": {}}},
                "f:args": {},
            }
        },
    },
}


def stored_object(**edits: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "example.dev/v1",
        "kind": "Thing",
        "metadata": {
            "name": "t",
            "labels": {"aioreconcile.dev/sync": "shop", "team": "a"},
            "annotations": {"aioreconcile.dev/revision": "a" * 40, "note": "x"},
            "finalizers": ["example.dev/cleanup"],
            "managedFields": [
                {"manager": "aioreconcile", "operation": "Apply", "fieldsV1": FIELDS},
            ],
        },
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    "args": ["--port", "80"],
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "replicas": 1,
        },
        "status": {"ready": True},
    }
    for edit in edits.values():
        edit(obj)
    return obj


def test_as_stored_keeps_only_our_paths_with_their_stored_values() -> None:
    assert as_stored(stored_object(), FIELDS) == {
        "f:metadata": {
            "f:labels": {"f:aioreconcile.dev/sync": ["shop"]},
            "f:annotations": {"f:aioreconcile.dev/revision": {}},  # presence only
            "f:finalizers": {'v:"example.dev/cleanup"': ["example.dev/cleanup"]},
        },
        "f:spec": {
            "f:selector": [{"matchLabels": {"app": "web"}}],
            "f:containers": {
                'k:{"name":"web"}': {
                    "f:name": ["web"],
                    "f:image": ["nginx:1.27"],
                    "f:ports": {PORT_80: {"f:containerPort": [80]}},
                    "f:args": [["--port", "80"]],
                }
            },
        },
    }


def test_as_stored_leaves_out_what_the_object_lacks() -> None:
    obj = stored_object()
    del obj["spec"]["containers"][0]["args"]
    del obj["metadata"]["finalizers"]

    projected = as_stored(obj, FIELDS)

    assert "f:args" not in projected["f:spec"]["f:containers"]['k:{"name":"web"}']
    assert "f:finalizers" not in projected["f:metadata"]


STORED = as_stored(stored_object(), FIELDS)


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = obj["spec"]["containers"][-1]
    return container


def _set(path: str, value: Any) -> Any:
    def edit(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = obj
        for parent in parents:
            node = node[parent]
        node[leaf] = value

    return edit


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        pytest.param({}, [], id="as-stored"),
        pytest.param({"a": _set("status", {"ready": False})}, [], id="status"),
        pytest.param({"a": _set("spec.replicas", 9)}, [], id="field-we-do-not-own"),
        pytest.param(
            {"a": _set("metadata.annotations", {"aioreconcile.dev/revision": "b" * 40})},
            [],
            id="revision-stamp-value-and-foreign-annotation",
        ),
        pytest.param(
            {"a": lambda o: o["spec"]["containers"].insert(0, {"name": "sidecar"})},
            [],
            id="item-added-by-another-writer-before-ours",
        ),
        pytest.param(
            {"a": lambda o: _container(o).update(image="evil:1")},
            ["spec.containers[name=web].image"],
            id="declared-value",
        ),
        pytest.param(
            {"a": lambda o: _container(o)["ports"][0].update(containerPort="80")},
            ["spec.containers[name=web].ports[containerPort=80,protocol=TCP]"],
            id="keyed-item-gone-when-its-key-changes-type",
        ),
        pytest.param(
            {"a": lambda o: _container(o).update(args=["--port", "81"])},
            ["spec.containers[name=web].args"],
            id="atomic-list",
        ),
        pytest.param(
            {"a": _set("spec.selector", {"matchLabels": {"app": "web", "x": "y"}})},
            ["spec.selector"],
            id="atomic-map",
        ),
        pytest.param(
            {"a": _set("metadata.labels", {"team": "a"})},
            ["metadata.labels.aioreconcile.dev/sync"],
            id="our-label-removed",
        ),
        pytest.param(
            {"a": _set("metadata.annotations", {"note": "x"})},
            ["metadata.annotations.aioreconcile.dev/revision"],
            id="stamp-removed",
        ),
        pytest.param(
            {"a": _set("metadata.finalizers", [])},
            ["metadata.finalizers[=example.dev/cleanup]"],
            id="set-item-removed",
        ),
        pytest.param(
            {"a": _set("spec.containers", [])},
            ["spec.containers[name=web]"],
            id="container-removed",
        ),
    ],
)
def test_differences_name_our_paths_whose_stored_value_changed(
    edits: dict[str, Any], expected: list[str]
) -> None:
    assert differences(STORED, stored_object(**edits)) == expected


def test_differences_of_a_deleted_object_is_the_whole_object() -> None:
    assert differences(STORED, None) == ["."]


def test_our_fields_merge_our_apply_entries_and_skip_updates_and_subresources() -> None:
    obj = {
        "metadata": {
            "managedFields": [
                {"manager": "aioreconcile", "operation": "Apply", "fieldsV1": {"f:a": {}}},
                {"manager": "aioreconcile", "operation": "Apply", "fieldsV1": {"f:b": {}}},
                {"manager": "aioreconcile", "operation": "Update", "fieldsV1": {"f:c": {}}},
                {
                    "manager": "aioreconcile",
                    "operation": "Apply",
                    "subresource": "status",
                    "fieldsV1": {"f:status": {}},
                },
                {"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:d": {}}},
            ]
        }
    }

    assert our_fields(obj) == {"f:a": {}, "f:b": {}}
    assert our_fields({"metadata": {}}) is None


# --- guards an apply checks first ---------------------------------------------------------------


def thing(sync: str | None = "shop", **annotations: str) -> dict[str, Any]:
    labels = {"aioreconcile.dev/sync": sync} if sync else {}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "labels": labels, "annotations": annotations},
    }


@pytest.mark.parametrize(
    ("desired", "live", "expected"),
    [
        pytest.param(thing(), None, None, id="absent-is-created"),
        pytest.param(
            thing(**{"aioreconcile.dev/reconcile": "disabled"}),
            None,
            None,
            id="absent-is-created-even-if-disabled",
        ),
        pytest.param(thing(), thing(), None, id="ours"),
        pytest.param(thing(), thing(sync=None), None, id="unlabelled-is-adopted"),
        pytest.param(
            thing(),
            thing(**{"aioreconcile.dev/reconcile": "disabled"}),
            Action.SKIPPED,
            id="disabled-live",
        ),
        pytest.param(
            thing(**{"aioreconcile.dev/reconcile": "disabled"}),
            thing(),
            Action.SKIPPED,
            id="disabled-in-git",
        ),
        pytest.param(thing(), thing(sync="billing"), Action.FAILED, id="another-syncs"),
        pytest.param(
            thing(**{"aioreconcile.dev/adopt": "enabled"}),
            thing(sync="billing"),
            None,
            id="another-syncs-adopted",
        ),
        pytest.param(
            thing(),
            thing(sync="billing", **{"aioreconcile.dev/adopt": "enabled"}),
            Action.FAILED,
            id="adopt-only-counts-in-git",
        ),
    ],
)
def test_refusal(desired: dict[str, Any], live: dict[str, Any] | None, expected: Action) -> None:
    verdict = refusal(desired, live, sync="shop")

    assert (verdict[0] if verdict else None) is expected


def test_refusal_of_another_syncs_object_names_both_syncs_and_the_way_out() -> None:
    verdict = refusal(thing(), thing(sync="billing"), sync="shop")

    assert verdict is not None
    assert "'billing'" in verdict[1]
    assert "'shop'" in verdict[1]
    assert "aioreconcile.dev/adopt: enabled" in verdict[1]


def invalid(message: str, *causes: tuple[str, str], status: int = 422) -> ApiError:
    return ApiError(status=status, reason="Invalid", message=message, causes=causes)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            invalid(
                'Job.batch "m" is invalid: spec.template: Invalid value: {...}: field is immutable',
                ("spec.template", "Invalid value: {...}: field is immutable"),
            ),
            (("spec.template", "field is immutable"),),
            id="job-template",
        ),
        pytest.param(
            invalid(
                "...",
                ("spec.clusterIPs[0]", 'Invalid value: ["10.96.0.9"]: may not change once set'),
            ),
            (("spec.clusterIPs[0]", "may not change once set"),),
            id="service-cluster-ip",
        ),
        pytest.param(
            invalid("...", ("spec.replicas", "Invalid value: -1: must be >= 0")),
            (),
            id="merely-invalid",
        ),
        pytest.param(
            invalid("...", ("spec.x", "field is immutable"), status=409), (), id="not-422"
        ),
    ],
)
def test_immutable_fields_come_from_the_status_causes(
    error: ApiError, expected: tuple[tuple[str, str], ...]
) -> None:
    assert immutable_fields(error) == expected


def test_immutable_error_names_object_field_and_the_force_annotation() -> None:
    ref = ObjectRef("batch", "Job", "shop", "migrate")

    message = immutable_error(ref, [("spec.template", "field is immutable")])

    assert message.startswith("Job.batch/shop/migrate: immutable field spec.template")
    assert "aioreconcile.dev/force: enabled" in message


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({"aioreconcile.dev/force": "enabled"}, True),
        ({"aioreconcile.dev/force": "yes"}, False),
        ({}, False),
    ],
)
def test_may_recreate_only_when_git_says_force_enabled(
    annotations: dict[str, str], expected: bool
) -> None:
    assert may_recreate(thing(**annotations)) is expected
