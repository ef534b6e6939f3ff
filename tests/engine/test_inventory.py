"""Inventory: stale = previous - current, failed deletes merged back, and when pruning is safe."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioreconcile.engine.errors import AioreconcileError, InventoryError
from aioreconcile.engine.inventory import (
    Inventory,
    allow_prune,
    claimed_by,
    inventory_key,
    merge,
    prunable,
    stale,
)
from aioreconcile.engine.model import JsonObject, ObjectRef

WEB = ObjectRef("apps", "Deployment", "shop", "web", "v1")
CONFIG = ObjectRef("", "ConfigMap", "shop", "web-config", "v1")
ROLE = ObjectRef("rbac.authorization.k8s.io", "ClusterRole", "", "reader", "v1")
HPA_V2BETA2 = ObjectRef("autoscaling", "HorizontalPodAutoscaler", "shop", "web", "v2beta2")
HPA_V2 = ObjectRef("autoscaling", "HorizontalPodAutoscaler", "shop", "web", "v2")


# --- set arithmetic -----------------------------------------------------------------------------


def test_stale_is_what_the_previous_run_applied_and_this_one_does_not_declare() -> None:
    previous = Inventory.of([WEB, CONFIG, ROLE])
    current = Inventory.of([WEB])

    assert stale(previous, current) == sorted([CONFIG, ROLE])


def test_stale_keeps_the_version_the_object_was_applied_at() -> None:
    previous = Inventory.of([HPA_V2BETA2, CONFIG])

    [gone] = stale(previous, Inventory.of([CONFIG]))

    assert gone.version == "v2beta2"


def test_an_object_moved_to_another_api_version_is_not_stale() -> None:
    assert stale(Inventory.of([HPA_V2BETA2]), Inventory.of([HPA_V2])) == []


def test_stale_order_does_not_depend_on_insertion_order() -> None:
    refs = [ROLE, WEB, CONFIG, HPA_V2]

    assert stale(Inventory.of(refs), Inventory()) == stale(Inventory.of(refs[::-1]), Inventory())


def test_merge_keeps_failed_deletions_so_the_next_run_retries_them() -> None:
    merged = merge(Inventory.of([WEB]), [CONFIG, ROLE])

    assert merged == Inventory.of([WEB, CONFIG, ROLE])
    assert stale(merged, Inventory.of([WEB])) == sorted([CONFIG, ROLE])


def test_merge_keeps_the_current_version_of_an_object_in_both() -> None:
    merged = merge(Inventory.of([HPA_V2]), [HPA_V2BETA2])

    assert [ref.version for ref in merged.entries] == ["v2"]


def test_of_keeps_the_first_version_given() -> None:
    assert [ref.version for ref in Inventory.of([HPA_V2, HPA_V2BETA2]).entries] == ["v2"]


# --- serialisation ------------------------------------------------------------------------------


def test_to_entries_is_sorted_and_in_flux_format() -> None:
    assert Inventory.of([WEB, ROLE, CONFIG]).to_entries() == [
        {"id": "shop_web-config__ConfigMap", "v": "v1"},
        {"id": "shop_web_apps_Deployment", "v": "v1"},
        {"id": "_reader_rbac.authorization.k8s.io_ClusterRole", "v": "v1"},
    ]


def test_entries_round_trip_with_versions() -> None:
    inventory = Inventory.of([WEB, CONFIG, ROLE, HPA_V2BETA2])

    restored = Inventory.from_entries(inventory.to_entries())

    assert restored == inventory
    assert {(ref, ref.version) for ref in restored.entries} == {
        (ref, ref.version) for ref in inventory.entries
    }


def test_from_entries_tolerates_duplicates() -> None:
    entries = [
        {"id": "shop_web_apps_Deployment", "v": "v1"},
        {"id": "shop_web_apps_Deployment", "v": "v1"},
    ]

    assert Inventory.from_entries(entries) == Inventory.of([WEB])


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        pytest.param("shop_web_apps_Deployment", "entry 1 is not a map", id="not-a-map"),
        pytest.param({"v": "v1"}, "entry 1 has no string 'id'", id="no-id"),
        pytest.param({"id": 7, "v": "v1"}, "entry 1 has no string 'id'", id="id-not-a-string"),
        pytest.param(
            {"id": "shop_web_apps_Deployment"}, "'shop_web_apps_Deployment'", id="no-version"
        ),
        pytest.param(
            {"id": "shop_web_apps_Deployment", "v": ""}, "has no version", id="empty-version"
        ),
        pytest.param(
            {"id": "shop_web_Deployment", "v": "v1"}, "'shop_web_Deployment'", id="3-parts"
        ),
        pytest.param({"id": "shop_web_apps_Deploy_ment", "v": "v1"}, "_<kind>", id="5-parts"),
        pytest.param({"id": "shop__apps_Deployment", "v": "v1"}, "entry 1", id="no-name"),
        pytest.param({"id": "shop_web_apps_", "v": "v1"}, "entry 1", id="no-kind"),
    ],
)
def test_from_entries_names_the_entry_it_cannot_read(entry: object, names: str) -> None:
    entries = [{"id": "shop_web-config__ConfigMap", "v": "v1"}, entry]

    with pytest.raises(InventoryError, match=names.replace("[", r"\[")):
        Inventory.from_entries(entries)


@pytest.mark.parametrize(
    ("entries", "names"),
    [
        pytest.param({"id": "shop_web_apps_Deployment", "v": "v1"}, "but dict", id="a-map"),
        pytest.param("shop_web_apps_Deployment", "but str", id="a-string"),
        pytest.param(7, "but int 7", id="a-number"),
        pytest.param(None, "but NoneType", id="null"),
    ],
)
def test_from_entries_refuses_what_is_not_a_list(entries: object, names: str) -> None:
    with pytest.raises(InventoryError, match=f"inventory is not a list of entries {names}"):
        Inventory.from_entries(entries)


def test_an_unreadable_inventory_is_one_of_our_errors() -> None:
    """So the reactor reports it (InventoryFailed) instead of letting it escape."""
    assert issubclass(InventoryError, AioreconcileError)


_name = st.from_regex(r"\A[a-z]([a-z0-9.-]{0,14}[a-z0-9])?\Z")
_refs = st.builds(
    ObjectRef,
    group=st.one_of(st.just(""), _name),
    kind=st.from_regex(r"\A[A-Z][A-Za-z]{0,15}\Z"),
    namespace=st.one_of(st.just(""), _name),
    name=_name,
    version=st.from_regex(r"\Av[1-9](beta[1-9])?\Z"),
)


@given(refs=st.lists(_refs, max_size=8))
def test_any_inventory_survives_a_round_trip(refs: list[ObjectRef]) -> None:
    inventory = Inventory.of(refs)

    restored = Inventory.from_entries(inventory.to_entries())

    assert restored.to_entries() == inventory.to_entries()


# --- prunable -----------------------------------------------------------------------------------


def _live(
    *, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None, **meta: Any
) -> JsonObject:
    metadata: JsonObject = {
        "name": "web-config",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "aioreconcile", "aioreconcile.dev/sync": "shop"}
        if labels is None
        else labels,
        **meta,
    }
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}


@pytest.mark.parametrize(
    ("live", "sync", "expected", "reason"),
    [
        pytest.param(_live(), None, True, "no longer in the source", id="ours"),
        pytest.param(_live(), "shop", True, "no longer in the source", id="ours-this-sync"),
        pytest.param(None, None, False, "already gone", id="gone"),
        pytest.param(
            _live(annotations={"aioreconcile.dev/prune": "disabled"}),
            None,
            False,
            "aioreconcile.dev/prune: disabled",
            id="prune-disabled",
        ),
        pytest.param(
            _live(annotations={"aioreconcile.dev/prune": "enabled"}),
            None,
            True,
            "no longer in the source",
            id="prune-annotation-other-value",
        ),
        pytest.param(_live(labels={}), None, False, "someone took it over", id="label-removed"),
        pytest.param(
            _live(labels={"app.kubernetes.io/managed-by": "Helm"}),
            None,
            False,
            "someone took it over",
            id="taken-over-by-helm",
        ),
        pytest.param(
            _live(
                labels={
                    "app.kubernetes.io/managed-by": "aioreconcile",
                    "aioreconcile.dev/sync": "payments",
                }
            ),
            "shop",
            False,
            "aioreconcile.dev/sync: payments",
            id="another-sync-declares-it",
        ),
        pytest.param(
            _live(namespace="default"), None, False, "default/web-config", id="wrong-object-read"
        ),
    ],
)
def test_prunable_deletes_only_what_is_still_ours(
    live: JsonObject | None, sync: str | None, expected: bool, reason: str
) -> None:
    allowed, why = prunable(CONFIG, live, sync=sync)

    assert (allowed, reason in why) == (expected, True), why


_INVENTORY = "aioreconcile.dev/inventory"


@pytest.mark.parametrize(
    ("annotations", "expected", "reason"),
    [
        pytest.param({_INVENTORY: "ops/inv"}, True, "no longer in the source", id="this-inventory"),
        # Listed by the stored inventory, applied before the annotation existed: still pruned.
        pytest.param({}, True, "no longer in the source", id="no-annotation"),
        pytest.param(
            {_INVENTORY: "other/inv"},
            False,
            "annotated aioreconcile.dev/inventory: other/inv",
            id="another-inventory",
        ),
    ],
)
def test_prunable_refuses_an_object_another_inventory_holds(
    annotations: dict[str, str], expected: bool, reason: str
) -> None:
    allowed, why = prunable(
        CONFIG, _live(annotations=annotations), sync="shop", inventory="ops/inv"
    )

    assert (allowed, reason in why) == (expected, True), why


@pytest.mark.parametrize(
    ("annotations", "claimed"),
    [
        pytest.param({_INVENTORY: "ops/inv"}, True, id="this-inventory"),
        pytest.param({_INVENTORY: "other/inv"}, False, id="same-sync-name-other-inventory"),
        pytest.param({_INVENTORY: "ops/inv-2"}, False, id="a-prefix-is-not-enough"),
        pytest.param({}, False, id="older-version-or-by-hand"),
        pytest.param(None, False, id="no-annotations-at-all"),
    ],
)
def test_a_rebuild_claims_only_objects_that_name_its_inventory(
    annotations: dict[str, str] | None, claimed: bool
) -> None:
    assert claimed_by(_live(annotations=annotations), inventory_key("ops", "inv")) is claimed


# --- allow_prune --------------------------------------------------------------------------------

_OK: dict[str, Any] = {
    "fetch_ok": True,
    "render_ok": True,
    "apply_failed": 0,
    "current_empty": False,
    "allow_empty": False,
}


@pytest.mark.parametrize(
    ("changes", "expected", "reason"),
    [
        pytest.param({}, True, "applied in full", id="all-well"),
        pytest.param({"fetch_ok": False}, False, "could not be fetched", id="fetch-failed"),
        pytest.param({"render_ok": False}, False, "could not be rendered", id="render-failed"),
        pytest.param({"apply_failed": 1}, False, "1 object failed", id="one-apply-failed"),
        pytest.param({"apply_failed": 3}, False, "3 objects failed", id="applies-failed"),
        pytest.param({"current_empty": True}, False, "allowEmpty", id="empty-source"),
        pytest.param(
            {"current_empty": True, "allow_empty": True}, True, "applied", id="empty-allowed"
        ),
        pytest.param(
            {"current_empty": True, "allow_empty": True, "render_ok": False},
            False,
            "rendered",
            id="empty-allowed-but-render-failed",
        ),
    ],
)
def test_allow_prune_only_after_a_complete_run(
    changes: dict[str, Any], expected: bool, reason: str
) -> None:
    allowed, why = allow_prune(**{**_OK, **changes})

    assert (allowed, reason in why) == (expected, True), why
