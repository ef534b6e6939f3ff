"""What a sync applied, as a set, and when it is safe to delete what it no longer declares.

Pruning is the only thing aioreconcile does that cannot be undone by the next commit, so the
rules live here, as functions of data, where every case is a line in a table of tests. As in
fluxcd/kustomize-controller (``internal/inventory``): stale = previous - current, and objects
whose deletion failed are merged back so that the next run tries again instead of forgetting them.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

from aioreconcile.engine.errors import InventoryError
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.naming import (
    DISABLED,
    INVENTORY_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    PRUNE_ANNOTATION,
    SYNC_LABEL,
)


@dataclass(frozen=True)
class Inventory:
    """The objects one sync applied. Refs compare without version; each keeps its version,
    because deleting an object needs the version it was applied at."""

    entries: frozenset[ObjectRef] = frozenset()

    @classmethod
    def of(cls, refs: Iterable[ObjectRef]) -> "Inventory":
        """The set of ``refs``; of refs naming the same object, the first one's version is kept."""
        first: dict[ObjectRef, ObjectRef] = {}
        for ref in refs:
            first.setdefault(ref, ref)
        return cls(frozenset(first))

    def to_entries(self) -> list[dict[str, str]]:
        """``[{"id": <namespace>_<name>_<group>_<kind>, "v": <version>}]``, sorted, as Flux stores
        it, so that the status field reads the same on every run and diffs stay quiet."""
        return [{"id": ref.inventory_id, "v": ref.version} for ref in sorted(self.entries)]

    @classmethod
    def from_entries(cls, entries: object) -> "Inventory":
        """Inverse of ``to_entries``. An entry listed twice counts once (the first is kept);
        anything else unreadable raises InventoryError naming it, rather than being skipped: a
        skipped entry is an object that would never be pruned."""
        if not isinstance(entries, list | tuple):
            raise InventoryError(
                f"inventory is not a list of entries but {type(entries).__name__} {entries!r:.80}"
            )
        return cls.of(_parse_entry(position, entry) for position, entry in enumerate(entries))


def _parse_entry(position: int, entry: object) -> ObjectRef:
    if not isinstance(entry, Mapping):
        raise InventoryError(f"inventory entry {position} is not a map: {entry!r}")
    entry_id, version = entry.get("id"), entry.get("v")
    if not isinstance(entry_id, str):
        raise InventoryError(f"inventory entry {position} has no string 'id': {dict(entry)!r}")
    if not isinstance(version, str) or not version:
        raise InventoryError(
            f"inventory entry {position} ({entry_id!r}) has no version 'v', "
            "which deleting the object needs"
        )
    parts = entry_id.split("_")
    if len(parts) != 4 or not parts[1] or not parts[3]:
        raise InventoryError(
            f"inventory entry {position}: {entry_id!r} is not <namespace>_<name>_<group>_<kind>"
        )
    return ObjectRef.parse_inventory_id(entry_id, version)


def stale(previous: Inventory, current: Inventory) -> list[ObjectRef]:
    """What ``previous`` has and ``current`` lacks, sorted, with the versions ``previous`` kept.

    A manifest moved from one apiVersion to another is the same object and is not stale.
    """
    return sorted(ref for ref in previous.entries if ref not in current.entries)


def merge(current: Inventory, survivors: Iterable[ObjectRef]) -> Inventory:
    """``current`` plus the stale objects whose deletion failed, so the next run retries them.

    Dropping them would leave orphans no run ever deletes (fluxcd/kustomize-controller does the
    same after a webhook rejects a delete). ``current``'s version wins for an object in both.
    """
    return Inventory.of(chain(current.entries, survivors))


def inventory_key(namespace: str, name: str) -> str:
    """The value of ``INVENTORY_ANNOTATION`` for the inventory ConfigMap ``namespace/name``."""
    return f"{namespace}/{name}"


def claimed_by(live: JsonObject, inventory: str) -> bool:
    """Whether ``live`` names ``inventory`` as the one that applied it (``INVENTORY_ANNOTATION``).

    The rule a rebuild from labels keeps an object by. The sync label alone is not proof: sync
    names are chosen by people, and two controllers (or two ``apply --prune`` users) that both
    named a sync ``app`` would each take the other's objects for their own and prune them. An
    object without the annotation (applied before it existed, or labelled by hand) is not
    claimed either: a rebuild never prunes it, and the next apply adopts it only if the source
    still declares it. Argo CD's annotation tracking (``argocd.argoproj.io/tracking-id``) exists
    for the same reason: a label value names an app, not the one controller that owns it.
    """
    metadata = live.get("metadata")
    annotations = _as_map(metadata.get("annotations")) if isinstance(metadata, dict) else {}
    return annotations.get(INVENTORY_ANNOTATION) == inventory


def prunable(
    ref: ObjectRef,
    live: JsonObject | None,
    *,
    sync: str | None = None,
    inventory: str | None = None,
) -> tuple[bool, str]:
    """Whether a stale object may be deleted now that it was read back, and why (or why not).

    Like fluxcd/pkg's ``ResourceManager.Delete`` (``ssa/manager_delete.go``), which
    kustomize-controller calls with its owner labels as inclusions and ``prune: disabled`` as an
    exclusion, the inventory alone is not trusted: only an object that still carries our
    managed-by label (and, when ``sync`` is given, this sync's label) is deleted. Someone may have
    taken it over by hand, or another sync may now declare it; deleting it would destroy their
    work. When ``inventory`` is given, an object stamped with another inventory's
    ``INVENTORY_ANNOTATION`` is refused too: a sync of the same name elsewhere applied it last.
    One without the annotation is not refused here (a stored inventory that lists it is the
    proof; objects applied before the annotation existed must still be pruned). An object that
    names a different name or namespace than ``ref`` is refused too: that is the reader's bug,
    and a delete is the wrong place to find it.
    """
    if live is None:
        return False, "already gone"
    metadata = live.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name, namespace = metadata.get("name"), metadata.get("namespace") or ""
    if (name, namespace) != (ref.name, ref.namespace):
        return False, f"the object read back is {namespace}/{name}, not {ref}"
    labels = _as_map(metadata.get("labels"))
    annotations = _as_map(metadata.get("annotations"))
    if annotations.get(PRUNE_ANNOTATION) == DISABLED:
        return False, f"annotated {PRUNE_ANNOTATION}: {DISABLED}"
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
        return (
            False,
            f"no longer labelled {MANAGED_BY_LABEL}: {MANAGED_BY_VALUE}; someone took it over",
        )
    if sync is not None and labels.get(SYNC_LABEL) != sync:
        owner = labels.get(SYNC_LABEL)
        return False, f"labelled {SYNC_LABEL}: {owner}, another sync now declares it"
    owner = annotations.get(INVENTORY_ANNOTATION)
    if inventory is not None and owner is not None and owner != inventory:
        return False, f"annotated {INVENTORY_ANNOTATION}: {owner}, another inventory holds it"
    return True, "no longer in the source"


def _as_map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def allow_prune(
    *, fetch_ok: bool, render_ok: bool, apply_failed: int, current_empty: bool, allow_empty: bool
) -> tuple[bool, str]:
    """Whether this run may prune at all, and why (the reason goes to logs and status).

    Prune only after a run that read, rendered and applied everything: otherwise "not in the
    current set" may only mean "not read this time", and pruning would delete live workloads
    because of a network blip or a template error. A source that renders nothing is far more
    often a wrong path or a broken generator than an intent to delete everything, so it prunes
    only with ``allow_empty`` (Argo CD's ``allowEmpty``).
    """
    if not fetch_ok:
        return False, "not pruning: the source could not be fetched"
    if not render_ok:
        return False, "not pruning: the source could not be rendered"
    if apply_failed > 0:
        objects = "object" if apply_failed == 1 else "objects"
        return False, f"not pruning: {apply_failed} {objects} failed to apply"
    if current_empty and not allow_empty:
        return False, "not pruning: the source declares no objects and allowEmpty is not set"
    return True, "pruning: the source was fetched, rendered and applied in full"
