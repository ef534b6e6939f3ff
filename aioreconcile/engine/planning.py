"""Desired vs live, decided from data alone: does this object need a write, and in which order?

An unchanged object must keep its resourceVersion: every needless write wakes every watcher of
the object (our own drift watch included), bumps ``generation`` for some kinds and shows up as
noise in audit logs. fluxcd/pkg (``ssa/manager_apply.go``) asks the server for a dry-run of
every object and compares; here most objects are settled without a request, by reading what the
applier already has from its LIST: our entry in ``metadata.managedFields`` and the live values.
Only when the server may have rewritten a value (quantities, defaulted key fields, nulls) is the
answer ``VERIFY``, and the applier asks for a dry-run and compares it with ``same_content``; a
value the server stores as written (a label, a ConfigMap's data) that differs is ``APPLY``,
one request where a dry-run would make it two.
"""

import copy
import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from enum import Enum, IntEnum, StrEnum
from typing import Any, Final, TypeVar

from aioreconcile.engine.changeset import Action
from aioreconcile.engine.errors import ApiError
from aioreconcile.engine.model import JsonObject, Manifest, ManifestError, ObjectRef
from aioreconcile.engine.naming import (
    ADOPT_ANNOTATION,
    DISABLED,
    ENABLED,
    FIELD_MANAGER,
    FORCE_ANNOTATION,
    INVENTORY_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RECONCILE_ANNOTATION,
    REVISION_ANNOTATION,
    SYNC_LABEL,
    TRACEPARENT_ANNOTATION,
)

_T = TypeVar("_T")

VOLATILE_ANNOTATIONS: Final = frozenset({REVISION_ANNOTATION, TRACEPARENT_ANNOTATION})
"""Stamps whose *value* changes with every commit or trace but says nothing about the object.

Comparing them would rewrite every object of a sync on every commit. Their presence still
counts: a stamp that appears or disappears is a real change of the object.
"""

SERVER_FIELDS: Final = (
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
)
"""Metadata the server writes and nobody declares; never part of a comparison or a diff."""

LAST_APPLIED_ANNOTATION: Final = "kubectl.kubernetes.io/last-applied-configuration"

_CRD_GROUP: Final = "apiextensions.k8s.io"

_KEY_FIELD_DEFAULTS: Final[Mapping[str, object]] = {"protocol": "TCP"}
"""Key fields of associative lists that the server defaults before it records ownership.

Container and Service ports are keyed by ``(port, protocol)``, and since Kubernetes 1.20/1.21
(structured-merge-diff#130, kubernetes#98576) an applied port without ``protocol`` is recorded
as ``k:{"containerPort":80,"protocol":"TCP"}``. Without this default, every manifest that omits
the protocol (most of them) would look like it had lost its port.
"""

_SALT: Final = secrets.token_bytes(32)
"""Keys the Secret tokens; new in every process.

Without it a token would be a plain hash of the value, and the short values Secrets often hold
(``true``, ``5432``, a weak password) could be recovered from a log line by trying candidates.
With it, tokens are comparable only within this process, which is all a diff needs: the same
value gives the same token on both sides, a changed one a different token.
"""


class Decision(StrEnum):
    """What the applier does with one object."""

    CREATE = "create"
    """Absent from the cluster: apply it."""
    UNCHANGED = "unchanged"
    """Already as declared, and we own everything we declared before: no request at all."""
    APPLY = "apply"
    """Certainly different (not ours yet, or we must give up fields): apply it."""
    VERIFY = "verify"
    """Maybe different: dry-run the apply and write only if ``same_content`` says it differs."""


class Stage(IntEnum):
    """Apply order. Kinds must exist before their objects, namespaces before their contents."""

    CRDS = 0
    NAMESPACES = 1
    CLUSTER = 2
    NAMESPACED = 3


def stamp(
    body: JsonObject,
    *,
    sync: str,
    revision: str,
    traceparent: str | None,
    inventory: str | None = None,
) -> JsonObject:
    """The body we apply: the desired object plus the labels and annotations that make it ours.

    The managed-by and sync labels are what pruning trusts before deleting anything; the
    inventory annotation (when the sync keeps one) is what a rebuild of a lost inventory
    trusts, since two syncs may share a name but never an inventory; the revision and
    traceparent annotations let a person (and the drift watch) trace the object back to a
    commit. ``body`` is copied (``_json_copy``), never changed.
    """
    stamped = _json_copy(body)
    metadata = stamped.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise ManifestError("metadata is not a map")
    labels = _map_at(metadata, "labels")
    labels[MANAGED_BY_LABEL] = MANAGED_BY_VALUE
    labels[SYNC_LABEL] = sync
    annotations = _map_at(metadata, "annotations")
    annotations[REVISION_ANNOTATION] = revision
    if inventory is not None:
        annotations[INVENTORY_ANNOTATION] = inventory
    if traceparent is not None:
        annotations[TRACEPARENT_ANNOTATION] = traceparent
    return stamped


def _json_copy(value: _T) -> _T:
    """A deep copy of a JSON tree (maps, lists, scalars), as manifests are after parsing.

    ``copy.deepcopy`` keeps a memo for shared and cyclic references, which a parsed manifest
    never has; this is ~4x faster, and ``stamp`` runs for every object of every apply.
    """
    if isinstance(value, dict):
        return {key: _json_copy(child) for key, child in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [_json_copy(child) for child in value]  # type: ignore[return-value]
    return value


def opted_out(desired: JsonObject, live: JsonObject | None) -> bool:
    """``aioreconcile.dev/reconcile: disabled`` in Git or on the live object."""
    return _annotations(desired).get(RECONCILE_ANNOTATION) == DISABLED or (
        live is not None and _annotations(live).get(RECONCILE_ANNOTATION) == DISABLED
    )


def refusal(
    desired: JsonObject, live: JsonObject | None, *, sync: str
) -> tuple[Action, str] | None:
    """Whether an existing object must be left alone before anything is decided about it.

    - annotated ``aioreconcile.dev/reconcile: disabled`` (in Git or live): ``SKIPPED``, for new
      commits as for drift; an object not there yet is still created (as Flux does);
    - labelled as another sync's: ``FAILED``, naming both syncs, unless the object in Git is
      annotated ``aioreconcile.dev/adopt: enabled``. Two syncs declaring one object would
      otherwise take it from each other on every commit, silently (Argo CD reports this as a
      shared resource); the rest of the sync goes on.
    """
    if live is None:
        return None
    if opted_out(desired, live):
        return Action.SKIPPED, f"annotated {RECONCILE_ANNOTATION}: {DISABLED}"
    metadata = live.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    owner = labels.get(SYNC_LABEL) if isinstance(labels, dict) else None
    if owner and owner != sync and _annotations(desired).get(ADOPT_ANNOTATION) != ENABLED:
        return Action.FAILED, (
            f"belongs to sync {owner!r} ({SYNC_LABEL}); sync {sync!r} declares it too: "
            f"remove it from one of them, or annotate it {ADOPT_ANNOTATION}: {ENABLED} in "
            f"sync {sync!r}'s source to take it over"
        )
    return None


_IMMUTABLE_PHRASES: Final = (
    "field is immutable",
    "is immutable",
    "may not change once set",
    "updates to statefulset spec for fields other than",
    "cannot be changed",
)


def immutable_fields(error: ApiError) -> tuple[tuple[str, str], ...]:
    """(field, why) for each field the server refused to change in place (422 Invalid for an
    immutable field: a Job's template, a Service's clusterIP, a selector), from its Status
    ``details.causes``; empty when the error is anything else, so a merely invalid manifest
    never triggers a recreate. ``why`` is the cause's last clause (``field is immutable``),
    without the value the server quotes, which may be large or hold a Secret's data.
    """
    if error.status != 422:
        return ()
    immutable = {
        field or "(unnamed)": message.rpartition(": ")[2]
        for field, message in error.causes
        if any(phrase in message for phrase in _IMMUTABLE_PHRASES)
    }
    return tuple(immutable.items())


def immutable_error(ref: ObjectRef, immutable: Iterable[tuple[str, str]]) -> str:
    """The failure of an object whose immutable fields changed: names it, them, and the way out."""
    fields = ", ".join(f"{field} ({why})" for field, why in immutable)
    return (
        f"{ref}: immutable field {fields}: cannot be changed in place; annotate it "
        f"{FORCE_ANNOTATION}: {ENABLED} in Git to have it deleted and recreated"
    )


def may_recreate(desired: JsonObject) -> bool:
    """``aioreconcile.dev/force: enabled`` on the object in Git (Flux's
    ``kustomize.toolkit.fluxcd.io/force``): recreate it when an immutable field changes."""
    return _annotations(desired).get(FORCE_ANNOTATION) == ENABLED


def _map_at(metadata: JsonObject, key: str) -> JsonObject:
    """``metadata[key]`` as a map we may fill; YAML's ``labels:`` with nothing after it is null."""
    value = metadata.get(key)
    if value is None:
        value = metadata[key] = {}
    if not isinstance(value, dict):
        raise ManifestError(f"metadata.{key} is not a map")
    return value


def decide(
    desired: JsonObject,
    live: JsonObject | None,
    *,
    field_manager: str = FIELD_MANAGER,
    previous: Callable[[], JsonObject | None] | None = None,
) -> Decision:
    """Whether ``desired`` (a ``stamp``-ed body) must be applied over ``live``, without asking.

    In order:

    1. no live object: ``CREATE``;
    2. no ``Apply`` entry of ``field_manager`` in live's managedFields (or one recorded at
       another apiVersion, whose paths we cannot read against ``desired``): ``APPLY``, to take
       ownership;
    3. a field in that entry that ``desired`` no longer has: ``APPLY``, only an apply removes
       it (a label deleted in Git, an env var, a container). An entry whose shape doesn't fit
       ``desired`` (a map where desired has a string): ``VERIFY``;
    4. ``desired`` contained in live, value for value: ``UNCHANGED``;
    5. a string that the server stores exactly as written (``_STORED_AS_WRITTEN``: labels,
       annotations, a ConfigMap's data) declared and absent or different in live: ``APPLY``
       directly. A dry-run could only confirm the difference, and cost a second request;
    6. ``desired`` no longer what this sync last applied (``previous``, a ``stamp``-ed body,
       read only here): ``APPLY``. Git changed a declared value, so a write is needed anyway;
       the dry-run would cost a second request to learn it. Its worst case, a new value the
       server normalises back to the stored one (``500m`` in Git after ``0.5``), is one write
       that changes only the revision stamps, once per such commit;
    7. otherwise ``VERIFY``, because the server may store a value differently from how it was
       written (``0.5`` -> ``500m``, ``2`` -> ``"2"``, a dropped null, a field its schema
       prunes, a mutating webhook's rewrite); the dry-run tells. This is what keeps an object
       whose declaration never changed from being rewritten on every commit (fluxcd/pkg
       dry-runs every object for that reason).

    Step 4 only decides whether to ask the server; whether the object differs is then judged
    by ``same_content`` on what the server would store, with ``differences``, the comparison
    the drift watch uses too. Values are compared everywhere by ``_equal``.

    Values of the revision and traceparent stamps are ignored, so a commit that leaves an object
    as it was does not rewrite it. ``live`` must carry ``apiVersion`` and ``kind``: the items of a
    LIST of built-in kinds come without them, and the reader must fill them in from the list.
    A field that ``desired`` declares and live holds with the same value but under another
    manager stays UNCHANGED and is not claimed; fluxcd/pkg, comparing dry-runs, behaves alike.
    """
    if live is None:
        return Decision.CREATE
    owned = _owned_fields(live, field_manager=field_manager)
    if not owned:
        return Decision.APPLY
    if any(api_version != desired.get("apiVersion") for api_version, _ in owned):
        return Decision.APPLY
    ownership = _Ownership.worst(_still_desired(fields, desired) for _, fields in owned)
    if ownership is _Ownership.ORPHANED:
        return Decision.APPLY
    if ownership is _Ownership.UNKNOWN:
        return Decision.VERIFY
    blank_desired, blank_live = _blank_stamps(desired), _blank_stamps(live)
    if _is_subset(blank_desired, blank_live):
        return Decision.UNCHANGED
    if _stored_as_written_differs(blank_desired, blank_live):
        return Decision.APPLY
    last = previous() if previous is not None else None
    if last is not None and changed_since(desired, last):
        return Decision.APPLY
    return Decision.VERIFY


def changed_since(desired: JsonObject, previous: JsonObject) -> bool:
    """Whether ``desired`` declares anything else than ``previous`` (both ``stamp``-ed): a
    value, a field, a type (``_equal``); a new revision or trace alone is no change. Decides
    step 6 of ``decide``, and which objects a push may write without reading them first
    (``ApplyOptions.as_left``)."""
    return not _equal(_blank_stamps(previous), _blank_stamps(desired))


def same_content(
    dry_run: JsonObject, live: JsonObject, *, field_manager: str = FIELD_MANAGER
) -> bool:
    """After ``VERIFY``: would our apply (its dry-run result) leave our fields as live has them?

    Both are read as stored (``as_stored``) over the fields our manager owns in either, so a
    field the apply would take or release counts, and nothing else does: server bookkeeping,
    status, other managers' fields (a mutating webhook's timestamp) and the volatile stamps'
    values. Values are compared with their types (``1`` is not ``1.0``), by ``differences``,
    the one comparison drift uses too.
    """
    fields = _merged(
        our_fields(dry_run, field_manager=field_manager),
        our_fields(live, field_manager=field_manager),
    )
    if fields is None:
        return False  # nothing of ours on either side: only a write makes it ours
    return not differences(as_stored(dry_run, fields), live) and not differences(
        as_stored(live, fields), dry_run
    )


def carry_stamps(desired: JsonObject, live: JsonObject) -> JsonObject:
    """``desired`` with the volatile stamp values live already has, for a dry-run or a preview.

    The dry-run result then differs from live only where the object does, so a diff shows no
    line for a new revision alone. Only stamps present on both sides are carried: a stamp that
    appears or disappears is a real change and stays visible. ``desired`` is not changed.
    """
    live_annotations = _annotations(live)
    desired_annotations = _annotations(desired)
    carried = {
        key: live_annotations[key]
        for key in VOLATILE_ANNOTATIONS
        if key in desired_annotations and key in live_annotations
    }
    if not carried:
        return desired
    metadata = desired["metadata"]
    return {**desired, "metadata": {**metadata, "annotations": {**desired_annotations, **carried}}}


def _annotations(obj: JsonObject) -> JsonObject:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def strip_for_diff(obj: JsonObject) -> JsonObject:
    """A copy without what the server writes (bookkeeping metadata and status).

    These fields differ between any two reads and would drown the one line a person cares about.
    """
    stripped = {key: copy.deepcopy(value) for key, value in obj.items() if key != "status"}
    metadata = stripped.get("metadata")
    if isinstance(metadata, dict):
        for key in SERVER_FIELDS:
            metadata.pop(key, None)
    return stripped


def mask_secret(obj: JsonObject) -> JsonObject:
    """A copy in which a core Secret's values are replaced by tokens that reveal nothing.

    A diff of two masked Secrets still shows which keys changed: the token is an HMAC of the
    namespace, name, key and value under a per-process random key (``_SALT``), so equal values
    give equal tokens and a changed value a different one. The object's identity goes into the
    HMAC so that two Secrets sharing a password don't show it. kubectl's last-applied annotation
    repeats the whole Secret in clear and is masked too. Other objects come back as plain copies.
    """
    masked = copy.deepcopy(obj)
    if not _is_core_secret(masked):
        return masked
    metadata = masked.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    for section in ("data", "stringData"):
        values = masked.get(section)
        if isinstance(values, dict):
            masked[section] = {
                key: _token(namespace, name, key, value) for key, value in values.items()
            }
        elif values is not None:
            masked[section] = _token(namespace, name, section, values)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict) and LAST_APPLIED_ANNOTATION in annotations:
        annotations[LAST_APPLIED_ANNOTATION] = _token(
            namespace, name, LAST_APPLIED_ANNOTATION, annotations[LAST_APPLIED_ANNOTATION]
        )
    return masked


def _is_core_secret(obj: JsonObject) -> bool:
    """A LIST item without apiVersion counts as core: masking too much is the safe mistake."""
    api_version = obj.get("apiVersion")
    group = api_version.rpartition("/")[0] if isinstance(api_version, str) else ""
    return obj.get("kind") == "Secret" and group == ""


def _token(namespace: str, name: str, key: str, value: object) -> str:
    message = json.dumps([namespace, name, key, value], separators=(",", ":"), sort_keys=True)
    digest = hmac.new(_SALT, message.encode(), hashlib.sha256).hexdigest()
    return f"<secret: sha256:{digest[:12]}>"


def stage_of(ref: ObjectRef, *, namespaced: bool) -> Stage:
    """Where an object goes in the apply order (``namespaced`` comes from discovery)."""
    if ref.group == _CRD_GROUP and ref.kind == "CustomResourceDefinition":
        return Stage.CRDS
    if ref.group == "" and ref.kind == "Namespace":
        return Stage.NAMESPACES
    return Stage.NAMESPACED if namespaced else Stage.CLUSTER


def staged(
    manifests: Iterable[Manifest], *, is_namespaced: Callable[[ObjectRef], bool]
) -> list[tuple[Stage, list[Manifest]]]:
    """Manifests grouped by stage, in apply order; empty stages left out, input order kept.

    The applier waits for each stage to settle (CRDs Established, Namespaces Active) before the
    next, as fluxcd/pkg's ``ApplyAllStaged`` does. ``is_namespaced`` is not asked about CRDs and
    Namespaces, whose place is known, so it need not know kinds whose CRD is in this batch.
    """
    return _grouped(
        ((manifest.ref, manifest) for manifest in manifests), is_namespaced=is_namespaced
    )


def prune_order(
    refs: Iterable[ObjectRef], *, is_namespaced: Callable[[ObjectRef], bool]
) -> list[tuple[Stage, list[ObjectRef]]]:
    """Stale objects grouped by stage, in delete order: the reverse of the apply order.

    Deleting a CRD or a Namespace first would delete its contents behind our back, and their
    deletion would then be reported as failures (or, for finalizers, block).
    """
    return list(reversed(_grouped(((ref, ref) for ref in refs), is_namespaced=is_namespaced)))


def _grouped(
    items: Iterable[tuple[ObjectRef, _T]], *, is_namespaced: Callable[[ObjectRef], bool]
) -> list[tuple[Stage, list[_T]]]:
    groups: dict[Stage, list[_T]] = {stage: [] for stage in Stage}
    for ref, item in items:
        groups[_stage(ref, is_namespaced=is_namespaced)].append(item)
    return [(stage, groups[stage]) for stage in Stage if groups[stage]]


def _stage(ref: ObjectRef, *, is_namespaced: Callable[[ObjectRef], bool]) -> Stage:
    settled = stage_of(ref, namespaced=False)
    if settled in (Stage.CRDS, Stage.NAMESPACES):
        return settled
    return stage_of(ref, namespaced=is_namespaced(ref))


# --- comparing values ---------------------------------------------------------------------------


def _is_subset(desired: object, live: object) -> bool:
    """Every map key of ``desired`` in ``live`` with a contained value; lists element-wise.

    Extra keys in live are the server's defaults and other managers' fields. Scalars must have
    the same type: ``1``, ``1.0``, ``"1"`` and ``True`` are four different values to the API.
    Leaves are compared inline (``_equal``'s rule for scalars): most nodes of a manifest are
    leaves, and a call per leaf was most of ``decide``'s time.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        for key, value in desired.items():
            if key not in live:
                return False
            other = live[key]
            if isinstance(value, dict | list):
                if not _is_subset(value, other):
                    return False
            elif type(value) is not type(other) or value != other:
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return False
        for value, other in zip(desired, live, strict=True):
            if isinstance(value, dict | list):
                if not _is_subset(value, other):
                    return False
            elif type(value) is not type(other) or value != other:
                return False
        return True
    return _equal(desired, live)


_STORED_AS_WRITTEN: Final = (
    (None, ("metadata", "labels")),
    (None, ("metadata", "annotations")),
    (("v1", "ConfigMap"), ("data",)),
)
"""(apiVersion, kind) or None for any kind, and the path of a ``map[string]string`` whose values
the apiserver stores exactly as written: no defaulting, no normalisation, no pruning of keys.

ObjectMeta's labels and annotations are such maps on every kind (apimachinery
``ObjectMeta``), and so is a core ConfigMap's ``data``. Elsewhere the engine knows no schema: a
quantity, an int-or-string, a field a CRD's schema prunes or a webhook rewrites could be stored
as the live value, so only the dry-run can tell there. A mutating webhook that rewrites a label
would make such an object be applied on each new revision instead of left alone: one needless
write per commit, never a wrong object.
"""


def _stored_as_written_differs(desired: JsonObject, live: JsonObject) -> bool:
    """Whether a string ``desired`` declares in a ``_STORED_AS_WRITTEN`` map is absent from
    ``live`` or different there: a change the server cannot undo by normalising. Values
    compare by ``_equal``, as ``_is_subset`` does; a non-string (null, a number) proves
    nothing, since the server may drop or refuse it."""
    identity = (desired.get("apiVersion"), desired.get("kind"))
    for kinds, path in _STORED_AS_WRITTEN:
        if kinds is not None and kinds != identity:
            continue
        declared, stored = _at(desired, path), _at(live, path)
        if not isinstance(declared, dict):
            continue
        stored = stored if isinstance(stored, dict) else {}
        for key, value in declared.items():
            if isinstance(value, str) and not (key in stored and _equal(value, stored[key])):
                return True
    return False


def _at(obj: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _equal(a: object, b: object) -> bool:
    """Deep equality in which, unlike ``==``, ``1 != 1.0`` and ``True != 1``."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and a == b


def _blank_stamps(obj: JsonObject) -> JsonObject:
    """``obj`` with the volatile stamps' values blanked; only the levels that change are copied."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return obj
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict) or VOLATILE_ANNOTATIONS.isdisjoint(annotations):
        return obj
    blanked = {key: "" if key in VOLATILE_ANNOTATIONS else v for key, v in annotations.items()}
    return {**obj, "metadata": {**metadata, "annotations": blanked}}


# --- reading managedFields ----------------------------------------------------------------------


class _Ownership(Enum):
    """How the fields we own relate to what we now declare; ordered from best to worst."""

    DESIRED = 0
    """Every owned field is still declared."""
    UNKNOWN = 1
    """The entry's shape does not fit the declared object; only the server can tell."""
    ORPHANED = 2
    """Some owned field is no longer declared, so an apply must remove it."""

    @classmethod
    def worst(cls, verdicts: Iterable["_Ownership"]) -> "_Ownership":
        """An orphaned field anywhere forces an apply, even if another part was unreadable."""
        worst = cls.DESIRED
        for verdict in verdicts:
            if verdict is cls.ORPHANED:
                return verdict
            if verdict is cls.UNKNOWN:
                worst = verdict
        return worst


def _owned_fields(live: JsonObject, *, field_manager: str) -> list[tuple[object, object]]:
    """(apiVersion, fieldsV1) of each entry in which ``field_manager`` applied the object.

    ``Update`` entries (a kubectl edit under our name, a client-side apply) don't count: what
    they own is not released by our next apply. Subresource entries (status) are someone
    else's business.
    """
    metadata = live.get("metadata")
    entries = metadata.get("managedFields") if isinstance(metadata, dict) else None
    if not isinstance(entries, list):
        return []
    return [
        (entry.get("apiVersion"), entry.get("fieldsV1"))
        for entry in entries
        if isinstance(entry, dict)
        and entry.get("manager") == field_manager
        and entry.get("operation") == "Apply"
        and not entry.get("subresource")
    ]


def _still_desired(fields: object, desired: object) -> _Ownership:
    """Walk a fieldsV1 tree against ``desired``: is every owned path still declared?

    fieldsV1 (structured-merge-diff ``fieldpath/serialize-pe.go``) nests path elements:
    ``f:<name>`` a map field, ``k:<json>`` a list item by its key fields, ``v:<json>`` a set
    item by value, ``i:<n>`` a list item by index, and ``.`` the node itself (no child to find).
    A leaf ``{}`` owns the whole value beneath it (atomic maps and lists), so only its presence
    is checked; values are compared by ``_is_subset`` afterwards. ``f:`` into a map, by far the
    most common element, is looked up inline; ``_find`` reads the others.
    """
    if not isinstance(fields, dict):
        return _Ownership.UNKNOWN
    worst = _Ownership.DESIRED
    for element, children in fields.items():
        if element == ".":
            continue
        if isinstance(element, str) and element.startswith("f:") and isinstance(desired, dict):
            name = element[2:]
            if name not in desired:
                return _Ownership.ORPHANED
            child = desired[name]
            # an applied null: whether it removes is the schema's call
            ownership = _Ownership.DESIRED if child is not None else _Ownership.UNKNOWN
        else:
            ownership, child = _find(element, desired)
        if ownership is _Ownership.DESIRED and (children or not isinstance(children, dict)):
            ownership = _still_desired(children, child)  # a leaf ``{}`` has no child to find
        if ownership is _Ownership.ORPHANED:
            return ownership
        if ownership is _Ownership.UNKNOWN:
            worst = ownership
    return worst


def _find(element: object, desired: object) -> tuple[_Ownership, object]:
    """The child of ``desired`` that one path element names, or why there is none."""
    if not isinstance(element, str):
        return _Ownership.UNKNOWN, None
    kind, separator, content = element.partition(":")
    if not separator:
        return _Ownership.UNKNOWN, None
    if kind == "f":
        if not isinstance(desired, dict):
            return _Ownership.UNKNOWN, None
        if content not in desired:
            return _Ownership.ORPHANED, None
        if desired[content] is None:
            return _Ownership.UNKNOWN, None  # an applied null: whether it removes is schema's call
        return _Ownership.DESIRED, desired[content]
    if not isinstance(desired, list):
        return _Ownership.UNKNOWN, None
    if kind == "i":
        try:
            index = int(content)
        except ValueError:
            return _Ownership.UNKNOWN, None
        if 0 <= index < len(desired):
            return _Ownership.DESIRED, desired[index]
        return _Ownership.ORPHANED, None
    if kind not in ("k", "v"):
        return _Ownership.UNKNOWN, None
    try:
        wanted = _decoded(content)
    except ValueError:
        return _Ownership.UNKNOWN, None
    if kind == "v":
        for item in desired:
            if _equal(item, wanted):
                return _Ownership.DESIRED, item
        return _Ownership.ORPHANED, None
    if not isinstance(wanted, dict) or not wanted:
        return _Ownership.UNKNOWN, None
    return _find_keyed(wanted, desired)


@functools.lru_cache(maxsize=4096)
def _decoded(content: str) -> object:
    """A ``k:``/``v:`` element's JSON, decoded once: the same keys (``{"name":"web"}``,
    ``{"containerPort":80,"protocol":"TCP"}``) recur in every object of a sync. Callers only
    read the result."""
    return json.loads(content)


def _find_keyed(key: JsonObject, items: list[Any]) -> tuple[_Ownership, object]:
    """The item whose key fields equal ``key``; a key field it omits may be a server default.

    An item that omits a key field with a known default (``protocol: TCP``) matches as if it
    carried it. One that omits any other key field, but agrees on the rest, might be the owned
    item after defaulting we don't know of: the server has to tell.
    """
    maybe = False
    for item in items:
        if not isinstance(item, dict):
            continue
        defaulted = {
            field: _KEY_FIELD_DEFAULTS[field]
            for field in key
            if field not in item and field in _KEY_FIELD_DEFAULTS
        }
        as_stored = {**defaulted, **item}  # so an owned ``f:protocol`` is found as well
        agreement = _Ownership.DESIRED
        for field, value in key.items():
            if field not in as_stored:
                agreement = _Ownership.UNKNOWN
            elif not _equal(as_stored[field], value):
                agreement = _Ownership.ORPHANED
                break
        if agreement is _Ownership.DESIRED:
            return _Ownership.DESIRED, as_stored
        maybe = maybe or agreement is _Ownership.UNKNOWN
    return (_Ownership.UNKNOWN, None) if maybe else (_Ownership.ORPHANED, None)


# --- what the server stored of our fields -------------------------------------------------------


def our_fields(obj: JsonObject, *, field_manager: str = FIELD_MANAGER) -> JsonObject | None:
    """The fieldsV1 tree of every path ``field_manager`` applied in ``obj``; None if it owns none.

    This is what the server recorded for our apply, after its own conversion and defaulting
    (``protocol: TCP`` in a port's key), so it names fields as they are stored, not as written.
    """
    merged: JsonObject | None = None
    for _, fields in _owned_fields(obj, field_manager=field_manager):
        if isinstance(fields, dict):
            merged = _merged(merged, fields)
    return merged


def as_stored(obj: JsonObject, fields: JsonObject) -> JsonObject:
    """``obj`` projected onto ``fields``: the values the server stored at the paths we own.

    The result keeps fieldsV1's path elements as keys (``f:spec``, ``k:{"name":"web"}``), so a
    keyed list item is found again by its key however the list is ordered or grown by others
    (an injected sidecar), and wraps each owned value in a one-element list, so a path node
    (a map) and a value are never confused. A path the object lacks is absent. Stored per
    object by the controller (compact, our fields only) and compared with ``differences``.
    Learned from structured-merge-diff's ``fieldpath`` sets, which kubectl and Flux read too.
    The volatile stamps keep their presence only (``{}``): their values never count, and
    10,000 objects need not hold every revision and traceparent twice.
    """
    projected = _project(obj, fields)
    metadata = projected.get("f:metadata")
    annotations = metadata.get("f:annotations") if isinstance(metadata, dict) else None
    if isinstance(annotations, dict):
        for key in VOLATILE_ANNOTATIONS:
            if f"f:{key}" in annotations:
                annotations[f"f:{key}"] = {}
    return projected


def _project(value: object, fields: JsonObject) -> JsonObject:
    projected: JsonObject = {}
    for element, children in fields.items():
        if element == ".":
            continue
        found, child = _lookup(element, value)
        if not found:
            continue
        owned = [key for key in children if key != "."] if isinstance(children, dict) else []
        if owned and isinstance(child, dict | list):
            projected[element] = _project(child, children)
        elif owned or (isinstance(children, dict) and "." not in children):
            projected[element] = [child]  # a value we own whole (a scalar, an atomic map)
        else:
            projected[element] = {}  # we own its existence only (a list item, a map)
    return projected


def differences(stored: JsonObject, live: JsonObject | None) -> list[str]:
    """Paths (``spec.template.spec.containers[name=web].image``) at which ``live`` no longer
    holds what ``stored`` (an ``as_stored`` projection) says the server stored for us.

    The one comparison of declared values: ``same_content`` (planning), ``drift.judge`` and the
    heal all use it. Values compare with their types; the volatile stamps' values are not in
    ``stored`` (a new revision alone is no change), their presence is. A deleted object differs
    at ``.``.
    """
    if live is None:
        return ["."]
    found: list[str] = []
    _differences(stored, live, "", found)
    return found


def _differences(stored: JsonObject, live: object, path: str, found: list[str]) -> None:
    for element, expected in stored.items():
        child_path = path + _readable(element, top=not path)
        present, actual = _lookup(element, live)
        if not present:
            found.append(child_path)
        elif isinstance(expected, dict):
            _differences(expected, actual, child_path, found)
        elif isinstance(expected, list) and expected and not _equal(expected[0], actual):
            found.append(child_path)


def _readable(element: str, *, top: bool) -> str:
    """A fieldsV1 path element as a person reads it in a path."""
    kind, _, content = element.partition(":")
    if kind == "f":
        return content if top else f".{content}"
    if kind == "i":
        return f"[{content}]"
    try:
        decoded = json.loads(content)
    except ValueError:
        return f"[{content}]"
    if kind == "k" and isinstance(decoded, dict):
        return "[" + ",".join(f"{k}={v}" for k, v in decoded.items()) + "]"
    return f"[={decoded}]"


def _lookup(element: object, value: object) -> tuple[bool, object]:
    """The child of a stored ``value`` that one fieldsV1 path element names, if present.

    Unlike ``_find`` (which reads a manifest, whose key fields may still await defaulting),
    both sides here were stored by the server, so keys are matched exactly.
    """
    if not isinstance(element, str):
        return False, None
    kind, separator, content = element.partition(":")
    if not separator:
        return False, None
    if kind == "f":
        if isinstance(value, dict) and content in value:
            return True, value[content]
        return False, None
    if not isinstance(value, list):
        return False, None
    if kind == "i":
        try:
            index = int(content)
        except ValueError:
            return False, None
        return (True, value[index]) if 0 <= index < len(value) else (False, None)
    try:
        wanted = json.loads(content)
    except ValueError:
        return False, None
    for item in value:
        if kind == "v" and _equal(item, wanted):
            return True, item
        if (
            kind == "k"
            and isinstance(wanted, dict)
            and isinstance(item, dict)
            and all(key in item and _equal(item[key], v) for key, v in wanted.items())
        ):
            return True, item
    return False, None


def _merged(a: JsonObject | None, b: JsonObject | None) -> JsonObject | None:
    """The union of two fieldsV1 trees."""
    if a is None:
        return b
    if b is None:
        return a
    merged = dict(a)
    for key, value in b.items():
        mine = merged.get(key)
        if isinstance(mine, dict) and isinstance(value, dict):
            merged[key] = _merged(mine, value)
        else:
            merged[key] = value
    return merged
