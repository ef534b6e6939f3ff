"""Planning: whether an object needs a write, decided from data; Secret masking; apply order.

``decide`` cases with realistic managed fields are YAML fixtures in fixtures/planning/decide/,
one per behaviour; the finer rules (value types, path elements) are tables below.
"""

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from aioreconcile.engine.model import JsonObject, Manifest, ObjectRef
from aioreconcile.engine.naming import (
    INVENTORY_ANNOTATION,
    MANAGED_BY_LABEL,
    REVISION_ANNOTATION,
    SYNC_LABEL,
    TRACEPARENT_ANNOTATION,
)
from aioreconcile.engine.planning import (
    Decision,
    Stage,
    carry_stamps,
    decide,
    mask_secret,
    prune_order,
    same_content,
    stage_of,
    staged,
    stamp,
    strip_for_diff,
)

FIXTURES = Path(__file__).parent / "fixtures" / "planning" / "decide"
CASES = sorted(FIXTURES.glob("*.yaml"))

OLD_SHA = "3b18e512dba79e4c8300dd08aeb37f8e728b8dad"
NEW_SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OLD_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --- decide: fixtures ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", CASES, ids=[path.stem for path in CASES])
def test_decide_gives_the_fixture_decision(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    desired = stamp(case["desired"], **case["stamp"])

    assert decide(desired, case["live"]) is Decision(case["expected"])


def test_fixtures_cover_every_decision() -> None:
    decisions = {yaml.safe_load(path.read_text())["expected"] for path in CASES}

    assert decisions == set(Decision)


# --- decide: the finer rules, on a small custom object ------------------------------------------


def _fields_v1(value: object) -> JsonObject:
    """What an apply of ``value`` owns, as fieldsV1: maps field by field, anything else whole."""
    if not isinstance(value, dict):
        return {}
    return {f"f:{key}": _fields_v1(child) for key, child in value.items()}


def _as_stored(
    applied: JsonObject, *, stored: JsonObject | None = None, fields: JsonObject | None = None
) -> JsonObject:
    """``stored`` (default: ``applied``) as the API returns it after we applied ``applied``."""
    live = copy.deepcopy(applied if stored is None else stored)
    metadata = live["metadata"]
    owned_metadata = {
        k: v for k, v in applied["metadata"].items() if k not in ("name", "namespace")
    }
    body = {k: v for k, v in applied.items() if k not in ("apiVersion", "kind", "metadata")}
    metadata.update(
        uid="9a5c3f0e-1b2d-4c6e-8f7a-0b1c2d3e4f5a",
        resourceVersion="7001",
        creationTimestamp="2024-05-02T09:14:07Z",
        managedFields=[
            {
                "apiVersion": applied["apiVersion"],
                "fieldsType": "FieldsV1",
                "fieldsV1": fields
                if fields is not None
                else _fields_v1({**body, "metadata": owned_metadata}),
                "manager": "aioreconcile",
                "operation": "Apply",
                "time": "2024-05-02T09:14:07Z",
            }
        ],
    )
    return live


def _widget(spec: Any) -> JsonObject:
    return stamp(
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w", "namespace": "shop"},
            "spec": spec,
        },
        sync="shop",
        revision=NEW_SHA,
        traceparent=None,
    )


_OWNS_SPEC: JsonObject = {"f:metadata": {"f:labels": {}, "f:annotations": {}}}


def _owning_spec(spec_fields: JsonObject) -> JsonObject:
    return {**_OWNS_SPEC, "f:spec": spec_fields}


@pytest.mark.parametrize(
    ("desired_spec", "live_spec", "expected"),
    [
        pytest.param({"size": 1}, {"size": 1}, Decision.UNCHANGED, id="same-integer"),
        pytest.param({"size": 1}, {"size": 1.0}, Decision.VERIFY, id="integer-vs-float"),
        pytest.param({"size": 1}, {"size": "1"}, Decision.VERIFY, id="integer-vs-string"),
        pytest.param({"on": True}, {"on": 1}, Decision.VERIFY, id="boolean-vs-integer"),
        pytest.param({"on": True}, {"on": "true"}, Decision.VERIFY, id="boolean-vs-string"),
        pytest.param(
            {"tags": ["a", "b"]}, {"tags": ["a", "b"]}, Decision.UNCHANGED, id="same-list"
        ),
        pytest.param({"tags": ["a"]}, {"tags": ["a", "b"]}, Decision.VERIFY, id="list-longer"),
        pytest.param({"tags": ["a", "b"]}, {"tags": ["b", "a"]}, Decision.VERIFY, id="list-order"),
        pytest.param(
            {"rules": [{"verb": "get"}]},
            {"rules": [{"verb": "get", "scope": "all"}]},
            Decision.UNCHANGED,
            id="list-item-with-server-default",
        ),
        pytest.param({"note": None}, {}, Decision.VERIFY, id="applied-null"),
        pytest.param({"limits": {}}, {}, Decision.VERIFY, id="empty-map-dropped"),
    ],
)
def test_decide_compares_values_by_type_and_lists_element_wise(
    desired_spec: JsonObject, live_spec: JsonObject, expected: Decision
) -> None:
    desired = _widget(desired_spec)
    live = _as_stored(desired, stored=_widget(live_spec))

    assert decide(desired, live) is expected


@pytest.mark.parametrize(
    ("desired_spec", "spec_fields", "expected"),
    [
        pytest.param({"a": 1}, {"f:a": {}}, Decision.UNCHANGED, id="f-present"),
        pytest.param({"a": 1}, {"f:a": {}, "f:b": {}}, Decision.APPLY, id="f-missing"),
        pytest.param({"a": "x"}, {"f:a": {"f:b": {}}}, Decision.VERIFY, id="f-into-a-string"),
        pytest.param({"l": [1, 2]}, {"f:l": {"i:1": {}}}, Decision.UNCHANGED, id="i-present"),
        pytest.param({"l": [1]}, {"f:l": {"i:1": {}}}, Decision.APPLY, id="i-past-the-end"),
        pytest.param({"l": [1]}, {"f:l": {"i:one": {}}}, Decision.VERIFY, id="i-not-a-number"),
        pytest.param({"s": ["x"]}, {"f:s": {'v:"x"': {}}}, Decision.UNCHANGED, id="v-present"),
        pytest.param({"s": [1]}, {"f:s": {'v:"1"': {}}}, Decision.APPLY, id="v-other-type"),
        pytest.param(
            {"l": [{"name": "a", "n": 1}]},
            {"f:l": {'k:{"name":"a"}': {".": {}, "f:name": {}, "f:n": {}}}},
            Decision.UNCHANGED,
            id="k-present",
        ),
        pytest.param(
            {"l": [{"name": "b"}]},
            {"f:l": {'k:{"name":"a"}': {".": {}, "f:name": {}}}},
            Decision.APPLY,
            id="k-missing",
        ),
        pytest.param(
            {"l": [{"name": "a"}]},
            {"f:l": {'k:{"name":"a"}': {".": {}, "f:name": {}, "f:n": {}}}},
            Decision.APPLY,
            id="k-present-but-field-removed",
        ),
        pytest.param(
            {"l": [{"port": 80}]},
            {"f:l": {'k:{"port":80,"scheme":"http"}': {".": {}, "f:port": {}}}},
            Decision.VERIFY,
            id="k-field-omitted-maybe-defaulted",
        ),
        pytest.param(
            {"l": [{"port": 80}]},
            {"f:l": {'k:{"port":80,"protocol":"TCP"}': {"f:port": {}, "f:protocol": {}}}},
            Decision.UNCHANGED,
            id="k-protocol-defaults-to-tcp",
        ),
        pytest.param(
            {"l": [{"port": 80}]},
            {"f:l": {"k:{not json": {}}},
            Decision.VERIFY,
            id="k-not-json",
        ),
        pytest.param({"a": 1}, {"f:a": {}, "x:a": {}}, Decision.VERIFY, id="unknown-element"),
        pytest.param(
            {"a": "x", "l": []},
            {"f:a": {"f:b": {}}, "f:gone": {}},
            Decision.APPLY,
            id="orphan-outweighs-unreadable",
        ),
    ],
)
def test_decide_walks_every_kind_of_path_element(
    desired_spec: JsonObject, spec_fields: JsonObject, expected: Decision
) -> None:
    desired = _widget(desired_spec)
    live = _as_stored(desired, fields=_owning_spec(spec_fields))

    assert decide(desired, live) is expected


def _old_widget(spec: Any) -> JsonObject:
    """``_widget`` as a previous commit stamped it (another revision)."""
    widget = _widget(spec)
    widget["metadata"]["annotations"][REVISION_ANNOTATION] = OLD_SHA
    return widget


@pytest.mark.parametrize(
    ("previous_spec", "desired_spec", "live_spec", "expected"),
    [
        pytest.param(
            {"cpu": "0.5"}, {"cpu": "1"}, {"cpu": "500m"}, Decision.APPLY, id="git-changed-it"
        ),
        pytest.param(
            {"cpu": "0.5"}, {"cpu": "0.5"}, {"cpu": "500m"}, Decision.VERIFY, id="git-did-not"
        ),
        pytest.param(
            {"cpu": "0.5"}, {"cpu": "1"}, {"cpu": "1"}, Decision.UNCHANGED, id="live-has-it-already"
        ),
        pytest.param(None, {"cpu": "1"}, {"cpu": "500m"}, Decision.VERIFY, id="nothing-known"),
        pytest.param(
            {"size": 1}, {"size": 1.0}, {"size": 1}, Decision.APPLY, id="a-type-change-counts"
        ),
    ],
)
def test_decide_applies_without_a_dry_run_what_git_changed_since_the_last_apply(
    previous_spec: JsonObject | None,
    desired_spec: JsonObject,
    live_spec: JsonObject,
    expected: Decision,
) -> None:
    """A new revision alone (the stamps' values) is not a change: ``git-did-not``."""
    desired = _widget(desired_spec)
    live = _as_stored(desired, stored=_widget(live_spec))
    previous = None if previous_spec is None else _old_widget(previous_spec)

    assert decide(desired, live, previous=lambda: previous) is expected


def test_decide_asks_for_the_previous_body_only_where_it_would_dry_run() -> None:
    asked: list[bool] = []

    def previous() -> JsonObject:
        asked.append(True)
        return _old_widget({"cpu": "0.5"})

    desired = _widget({"cpu": "1"})
    assert decide(desired, _as_stored(desired), previous=previous) is Decision.UNCHANGED
    assert decide(desired, None, previous=previous) is Decision.CREATE
    assert asked == []


def test_decide_compares_identity_too() -> None:
    desired = _widget({"a": 1})
    live = _as_stored(desired)
    live["apiVersion"] = "example.com/v2"
    live["metadata"]["managedFields"][0]["apiVersion"] = "example.com/v1"

    assert decide(desired, live) is Decision.VERIFY


def test_decide_reads_only_the_given_field_manager() -> None:
    desired = _widget({"a": 1})
    live = _as_stored(desired)

    assert decide(desired, live, field_manager="aioreconcile-canary") is Decision.APPLY


def test_decide_ignores_our_entries_for_a_subresource() -> None:
    desired = _widget({"a": 1})
    live = _as_stored(desired)
    live["metadata"]["managedFields"][0]["subresource"] = "status"

    assert decide(desired, live) is Decision.APPLY


def _config_map(data: Any, *, labels: Any = None, api_version: str = "v1") -> JsonObject:
    metadata: JsonObject = {"name": "c", "namespace": "shop"}
    if labels is not None:
        metadata["labels"] = labels
    return stamp(
        {"apiVersion": api_version, "kind": "ConfigMap", "metadata": metadata, "data": data},
        sync="shop",
        revision=NEW_SHA,
        traceparent=None,
    )


@pytest.mark.parametrize(
    ("desired", "stored", "expected"),
    [
        pytest.param(
            _config_map({"k": "new"}), _config_map({"k": "old"}), Decision.APPLY, id="data-value"
        ),
        pytest.param(
            _config_map({"k": "v", "added": "x"}),
            _config_map({"k": "v"}),
            Decision.APPLY,
            id="data-key-added",
        ),
        pytest.param(
            _config_map({"k": "v", "added": ""}),
            _config_map({"k": "v"}),
            Decision.APPLY,
            id="data-empty-string-added",
        ),
        pytest.param(
            _config_map({"k": "v", "added": None}),
            _config_map({"k": "v"}),
            Decision.VERIFY,
            id="data-null-added",
        ),
        pytest.param(
            _config_map({"k": 2}), _config_map({"k": "2"}), Decision.VERIFY, id="data-not-a-string"
        ),
        pytest.param(
            _config_map({"k": "v"}, labels={"team": "b"}),
            _config_map({"k": "v"}, labels={"team": "a"}),
            Decision.APPLY,
            id="label-value",
        ),
        pytest.param(
            _config_map({"k": "v"}, labels={"team": "a", "tier": "web"}),
            _config_map({"k": "v"}, labels={"team": "a"}),
            Decision.APPLY,
            id="label-added",
        ),
        pytest.param(
            _config_map({"k": "new"}, api_version="example.com/v1"),
            _config_map({"k": "old"}, api_version="example.com/v1"),
            Decision.VERIFY,
            id="custom-kind-named-configmap",
        ),
        pytest.param(
            _widget({"image": "nginx:1.28"}),
            _widget({"image": "nginx:1.27"}),
            Decision.VERIFY,
            id="spec-string-a-webhook-may-rewrite",
        ),
        pytest.param(
            _widget({"a": 1}), _widget({"a": 1}), Decision.UNCHANGED, id="same-everything"
        ),
    ],
)
def test_decide_applies_directly_what_the_server_stores_as_written(
    desired: JsonObject, stored: JsonObject, expected: Decision
) -> None:
    """A string in ObjectMeta's labels/annotations or a ConfigMap's data is stored as written
    (map[string]string, no defaulting): when it differs, the dry-run could only confirm it."""
    live = _as_stored(desired, stored=stored)

    assert decide(desired, live) is expected


@pytest.mark.parametrize(
    ("traced_before", "expected"),
    [
        pytest.param(True, Decision.UNCHANGED, id="new-revision-and-trace-alone"),
        pytest.param(False, Decision.APPLY, id="traceparent-stamp-appears"),
    ],
)
def test_only_the_presence_of_a_stamp_is_a_provable_change(
    traced_before: bool, expected: Decision
) -> None:
    declared: JsonObject = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "shop", "labels": {"team": "a"}},
        "data": {"k": "v"},
    }
    before = stamp(
        declared, sync="shop", revision=OLD_SHA, traceparent=OLD_TRACE if traced_before else None
    )
    desired = stamp(declared, sync="shop", revision=NEW_SHA, traceparent=TRACE)

    assert decide(desired, _as_stored(before)) is expected


# --- decide: a property -------------------------------------------------------------------------

_dns_label = st.from_regex(r"\A[a-z]([a-z0-9-]{0,14}[a-z0-9])?\Z")
_label_key = st.one_of(_dns_label, st.builds("{}/{}".format, _dns_label, _dns_label))
_data_key = st.from_regex(r"\A[A-Za-z0-9_.-]{1,20}\Z")


@st.composite
def _config_maps(draw: st.DrawFn) -> JsonObject:
    metadata: JsonObject = {"name": draw(_dns_label), "namespace": draw(_dns_label)}
    labels = draw(st.dictionaries(_label_key, _dns_label, max_size=4))
    annotations = draw(st.dictionaries(_label_key, st.text(max_size=40), max_size=4))
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    body: JsonObject = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    data = draw(st.dictionaries(_data_key, st.text(max_size=60), max_size=6))
    if data:
        body["data"] = data
    return body


@given(config_map=_config_maps(), traced=st.booleans())
def test_an_object_applied_by_an_earlier_commit_is_unchanged(
    config_map: JsonObject, traced: bool
) -> None:
    before = stamp(
        config_map, sync="shop", revision=OLD_SHA, traceparent=OLD_TRACE if traced else None
    )
    now = stamp(config_map, sync="shop", revision=NEW_SHA, traceparent=TRACE if traced else None)

    assert decide(now, _as_stored(before)) is Decision.UNCHANGED


# --- stamp --------------------------------------------------------------------------------------


def test_stamp_adds_ownership_and_provenance_without_touching_the_input() -> None:
    body: JsonObject = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "labels": {"app": "web"}, "annotations": {"note": "hi"}},
    }
    original = copy.deepcopy(body)

    stamped = stamp(
        body, sync="shop", revision=NEW_SHA, traceparent=TRACE, inventory="ops/inv-shop"
    )

    assert body == original
    assert stamped["metadata"]["labels"] == {
        "app": "web",
        MANAGED_BY_LABEL: "aioreconcile",
        SYNC_LABEL: "shop",
    }
    assert stamped["metadata"]["annotations"] == {
        "note": "hi",
        REVISION_ANNOTATION: NEW_SHA,
        TRACEPARENT_ANNOTATION: TRACE,
        INVENTORY_ANNOTATION: "ops/inv-shop",
    }


def test_stamp_without_a_trace_adds_no_traceparent_and_fills_empty_metadata() -> None:
    body: JsonObject = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"labels": None}}

    stamped = stamp(body, sync="shop", revision=NEW_SHA, traceparent=None)

    assert stamped["metadata"]["annotations"] == {REVISION_ANNOTATION: NEW_SHA}
    assert stamped["metadata"]["labels"][SYNC_LABEL] == "shop"


# --- same_content and strip_for_diff ------------------------------------------------------------


_CONFIG_MAP_FIELDS: JsonObject = {
    "f:metadata": {
        "f:labels": {f"f:{MANAGED_BY_LABEL}": {}},
        "f:annotations": {f"f:{REVISION_ANNOTATION}": {}, f"f:{TRACEPARENT_ANNOTATION}": {}},
    },
    "f:data": {"f:replicas": {}},
}
_WITH_FINALIZERS: JsonObject = {
    **_CONFIG_MAP_FIELDS,
    "f:metadata": {**_CONFIG_MAP_FIELDS["f:metadata"], "f:finalizers": {'v:"x"': {}}},
}


def _stored_config_map(**changes: Any) -> JsonObject:
    obj: JsonObject = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "c",
            "namespace": "shop",
            "uid": "9a5c3f0e-1b2d-4c6e-8f7a-0b1c2d3e4f5a",
            "resourceVersion": "7001",
            "generation": 1,
            "creationTimestamp": "2024-05-02T09:14:07Z",
            "labels": {MANAGED_BY_LABEL: "aioreconcile"},
            "annotations": {REVISION_ANNOTATION: OLD_SHA, TRACEPARENT_ANNOTATION: OLD_TRACE},
            "managedFields": [
                {"manager": "aioreconcile", "operation": "Apply", "fieldsV1": _CONFIG_MAP_FIELDS}
            ],
        },
        "data": {"replicas": "2"},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = obj
        for parent in parents:
            node = node[parent]
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return obj


_DELETE = object()


@pytest.mark.parametrize(
    ("changes", "same"),
    [
        pytest.param({}, True, id="identical"),
        pytest.param(
            {
                "metadata__resourceVersion": "7002",
                "metadata__generation": 2,
                "metadata__managedFields": [],
                "metadata__uid": "other",
                "metadata__creationTimestamp": "2024-05-03T00:00:00Z",
                "status": {"phase": "whatever"},
            },
            True,
            id="server-bookkeeping-differs",
        ),
        pytest.param(
            {
                "metadata__annotations": {
                    REVISION_ANNOTATION: NEW_SHA,
                    TRACEPARENT_ANNOTATION: TRACE,
                }
            },
            True,
            id="stamp-values-differ",
        ),
        pytest.param(
            {"metadata__annotations": {REVISION_ANNOTATION: NEW_SHA}},
            False,
            id="stamp-removed",
        ),
        pytest.param({"data": {"replicas": "3"}}, False, id="data-differs"),
        pytest.param({"data": {"replicas": 2}}, False, id="type-differs"),
        pytest.param({"metadata__labels": {}}, False, id="label-removed"),
        pytest.param(
            {
                "metadata__finalizers": ["x"],
                "metadata__managedFields": [
                    {"manager": "aioreconcile", "operation": "Apply", "fieldsV1": _WITH_FINALIZERS}
                ],
            },
            False,
            id="finalizer-we-declare-added",
        ),
        pytest.param(
            {"metadata__managedFields": []},
            True,
            id="dry-run-without-our-entry-read-over-lives",
        ),
        pytest.param(
            {
                "metadata__annotations": {
                    REVISION_ANNOTATION: OLD_SHA,
                    TRACEPARENT_ANNOTATION: OLD_TRACE,
                    "webhook.example/mutated-at": "now",
                }
            },
            True,
            id="field-another-writer-owns-differs",
        ),
    ],
)
def test_same_content_compares_only_our_fields_as_stored(
    changes: dict[str, Any], same: bool
) -> None:
    assert same_content(_stored_config_map(**changes), _stored_config_map()) is same


def test_strip_for_diff_leaves_what_a_person_declared() -> None:
    obj = _stored_config_map(status={"phase": "Active"})
    original = copy.deepcopy(obj)

    stripped = strip_for_diff(obj)

    assert obj == original
    assert stripped == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "c",
            "namespace": "shop",
            "labels": {MANAGED_BY_LABEL: "aioreconcile"},
            "annotations": {REVISION_ANNOTATION: OLD_SHA, TRACEPARENT_ANNOTATION: OLD_TRACE},
        },
        "data": {"replicas": "2"},
    }


@pytest.mark.parametrize(
    ("desired_stamps", "live_stamps", "expected"),
    [
        pytest.param(
            {REVISION_ANNOTATION: NEW_SHA, TRACEPARENT_ANNOTATION: TRACE},
            {REVISION_ANNOTATION: OLD_SHA, TRACEPARENT_ANNOTATION: OLD_TRACE},
            {REVISION_ANNOTATION: OLD_SHA, TRACEPARENT_ANNOTATION: OLD_TRACE},
            id="both-carried",
        ),
        pytest.param(
            {REVISION_ANNOTATION: NEW_SHA, TRACEPARENT_ANNOTATION: TRACE},
            {REVISION_ANNOTATION: OLD_SHA},
            {REVISION_ANNOTATION: OLD_SHA, TRACEPARENT_ANNOTATION: TRACE},
            id="new-stamp-stays-visible",
        ),
        pytest.param(
            {REVISION_ANNOTATION: NEW_SHA},
            {REVISION_ANNOTATION: OLD_SHA, TRACEPARENT_ANNOTATION: OLD_TRACE},
            {REVISION_ANNOTATION: OLD_SHA},
            id="dropped-stamp-stays-dropped",
        ),
    ],
)
def test_carry_stamps_keeps_live_stamp_values_for_a_quiet_preview(
    desired_stamps: dict[str, str], live_stamps: dict[str, str], expected: dict[str, str]
) -> None:
    desired = _stored_config_map(metadata__annotations={"note": "hi", **desired_stamps})
    original = copy.deepcopy(desired)

    carried = carry_stamps(desired, _stored_config_map(metadata__annotations=live_stamps))

    assert desired == original
    assert carried["metadata"]["annotations"] == {"note": "hi", **expected}
    assert {k: v for k, v in carried.items() if k != "metadata"} == {
        k: v for k, v in desired.items() if k != "metadata"
    }


# --- mask_secret --------------------------------------------------------------------------------

_TOKEN = re.compile(r"\A<secret: sha256:[0-9a-f]{12}>\Z")


def _secret(name: str = "db", **data: str) -> JsonObject:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    last_applied = json.dumps({"kind": "Secret", "data": encoded, "stringData": data})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": last_applied},
        },
        "type": "Opaque",
        "data": encoded,
        "stringData": dict(data),
    }


def test_mask_secret_shows_a_changed_value_as_changed_and_an_equal_one_as_equal() -> None:
    before = mask_secret(_secret(password="hunter2", user="app"))
    after = mask_secret(_secret(password="correct horse", user="app"))

    for masked in (before, after):
        assert all(_TOKEN.match(token) for token in masked["data"].values())
        assert all(_TOKEN.match(token) for token in masked["stringData"].values())
    assert before["data"]["user"] == after["data"]["user"]
    assert before["data"]["password"] != after["data"]["password"]


@pytest.mark.parametrize(
    ("secret", "other"),
    [
        pytest.param(_secret("db", a="same"), _secret("db", b="same"), id="other-key"),
        pytest.param(_secret("db", a="same"), _secret("cache", a="same"), id="other-secret"),
    ],
)
def test_mask_secret_does_not_reveal_that_two_values_are_equal(
    secret: JsonObject, other: JsonObject
) -> None:
    assert set(mask_secret(secret)["data"].values()).isdisjoint(mask_secret(other)["data"].values())


def test_mask_secret_leaves_no_plaintext_anywhere() -> None:
    plaintext = "s3cr3t-db-password"
    secret = _secret(password=plaintext)

    masked = json.dumps(mask_secret(secret))

    assert plaintext not in masked
    assert base64.b64encode(plaintext.encode()).decode() not in masked
    assert secret["stringData"]["password"] == plaintext  # the input is untouched
    assert _TOKEN.match(
        mask_secret(secret)["metadata"]["annotations"][
            "kubectl.kubernetes.io/last-applied-configuration"
        ]
    )


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}}, id="configmap"),
        pytest.param(
            {"apiVersion": "example.com/v1", "kind": "Secret", "data": {"a": "b"}},
            id="secret-of-another-group",
        ),
    ],
)
def test_mask_secret_copies_anything_else_unchanged(obj: JsonObject) -> None:
    masked = mask_secret(obj)

    assert masked == obj
    assert masked is not obj


# --- staging ------------------------------------------------------------------------------------

CRD = ObjectRef("apiextensions.k8s.io", "CustomResourceDefinition", "", "widgets.example.com", "v1")
NAMESPACE = ObjectRef("", "Namespace", "", "shop", "v1")
CLUSTER_ROLE = ObjectRef("rbac.authorization.k8s.io", "ClusterRole", "", "reader", "v1")
WIDGET = ObjectRef("example.com", "Widget", "shop", "w", "v1")
CONFIG_MAP = ObjectRef("", "ConfigMap", "shop", "c", "v1")
DEPLOYMENT = ObjectRef("apps", "Deployment", "shop", "web", "v1")
CLUSTER_SCOPED = {CLUSTER_ROLE}


def _namespaced(ref: ObjectRef) -> bool:
    if ref in (CRD, NAMESPACE):
        raise AssertionError(f"asked about {ref}, whose stage is known")
    return ref not in CLUSTER_SCOPED


@pytest.mark.parametrize(
    ("ref", "namespaced", "stage"),
    [
        pytest.param(CRD, False, Stage.CRDS, id="crd"),
        pytest.param(NAMESPACE, False, Stage.NAMESPACES, id="namespace"),
        pytest.param(CLUSTER_ROLE, False, Stage.CLUSTER, id="cluster-scoped"),
        pytest.param(CONFIG_MAP, True, Stage.NAMESPACED, id="namespaced"),
        pytest.param(
            ObjectRef("example.com", "Namespace", "", "n"),
            False,
            Stage.CLUSTER,
            id="other-namespace",
        ),
        pytest.param(
            ObjectRef("example.com", "CustomResourceDefinition", "", "c"),
            False,
            Stage.CLUSTER,
            id="other-crd",
        ),
    ],
)
def test_stage_of(ref: ObjectRef, namespaced: bool, stage: Stage) -> None:
    assert stage_of(ref, namespaced=namespaced) is stage


def _manifest(ref: ObjectRef) -> Manifest:
    return Manifest(ref=ref, body={}, origin=f"{ref}.yaml")


def test_staged_applies_kinds_and_namespaces_first_keeping_order_within_a_stage() -> None:
    manifests = [_manifest(ref) for ref in (DEPLOYMENT, WIDGET, CRD, CONFIG_MAP, NAMESPACE)]

    stages = staged(manifests, is_namespaced=_namespaced)

    assert [(stage, [m.ref for m in group]) for stage, group in stages] == [
        (Stage.CRDS, [CRD]),
        (Stage.NAMESPACES, [NAMESPACE]),
        (Stage.NAMESPACED, [DEPLOYMENT, WIDGET, CONFIG_MAP]),
    ]


def test_staged_of_nothing_is_empty() -> None:
    assert staged([], is_namespaced=_namespaced) == []


def test_prune_order_deletes_contents_before_their_namespaces_and_kinds() -> None:
    refs = [CRD, WIDGET, NAMESPACE, CLUSTER_ROLE, CONFIG_MAP]

    assert prune_order(refs, is_namespaced=_namespaced) == [
        (Stage.NAMESPACED, [WIDGET, CONFIG_MAP]),
        (Stage.CLUSTER, [CLUSTER_ROLE]),
        (Stage.NAMESPACES, [NAMESPACE]),
        (Stage.CRDS, [CRD]),
    ]
