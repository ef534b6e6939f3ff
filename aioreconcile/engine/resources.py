"""The Sync custom resource as the one model: a Sync object (a dict as the API server returns
it) becomes the ``SyncSpec`` that ``run --config`` builds, through the same parser, and a
sync's state becomes the Sync's ``status`` (kstatus conditions). Pure: the adapters read and
write the objects.

The CRD's spec is translated into the file format's keys and read by
``configuration``'s reader under the path ``spec``, so one set of rules checks both forms and a
problem names the CRD's field (``spec.source.url: required``). What only the CRD has (secrets
and keys by reference, ``dependsOn``) is added to the parsed spec afterwards.

In CRD mode a sync is identified by ``namespace/name``; the ``aioreconcile.dev/sync`` label on
its objects holds ``sync_identity``: ``<namespace>.<name>`` (both are DNS labels, so the dot
cannot be ambiguous), or, when that is longer than the 63 characters a label value may have,
the name's first 40 characters, ``-`` and 16 hex digits of a SHA-256 of ``namespace/name``
(no dot: never equal to the first form).
"""

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any, Final

from aioreconcile.engine.config import (
    AuthKind,
    DataRef,
    GitAuth,
    Provider,
    ReceiverSpec,
    SyncSpec,
    VerifyMode,
)
from aioreconcile.engine.configuration import ConfigError, _labels, _Reader, _sync
from aioreconcile.engine.model import JsonObject
from aioreconcile.engine.naming import DOMAIN
from aioreconcile.engine.outcomes import Reason
from aioreconcile.engine.receivers import WEBHOOK_PATH_PREFIX, webhook_path
from aioreconcile.engine.redaction import printable
from aioreconcile.engine.triggers import is_traceparent
from aioreconcile.engine.webhooks import is_commit_sha

REQUESTED_AT_ANNOTATION: Final = f"reconcile.{DOMAIN}/requestedAt"
# The commit a webhook named, written with the requestedAt of its hand-off (reconcile_request).
REVISION_HINT_ANNOTATION: Final = f"reconcile.{DOMAIN}/revision"
# The webhook request's span, for the reconcile's link (docs/tracing.md).
REQUEST_TRACE_ANNOTATION: Final = f"reconcile.{DOMAIN}/traceparent"
REQUESTED_AT_MAX: Final = 256
FINALIZER: Final = f"{DOMAIN}/finalizer"
_LABEL_MAX: Final = 63

_SPEC_KEYS: Final = frozenset(
    {
        "source",
        "render",
        "targetNamespace",
        "serviceAccountName",
        "prune",
        "selfHeal",
        "suspend",
        "allowEmpty",
        "wait",
        "timeout",
        "dependsOn",
    }
)
_SOURCE_KEYS: Final = frozenset(
    {"url", "ref", "path", "interval", "timeout", "secretRef", "verify"}
)
# Shared with the file format under the same names.
_PLAIN_SPEC_KEYS: Final = ("render", "targetNamespace", "prune", "selfHeal", "suspend")
_PLAIN_SPEC_KEYS_2: Final = ("allowEmpty", "wait", "timeout")
_PLAIN_SOURCE_KEYS: Final = ("url", "ref", "path", "interval", "timeout")

# Reasons a retry (backoff) may fix: Reconciling. The others wait for a change: Stalled.
_RETRIED: Final = frozenset(
    {
        Reason.FETCH_FAILED.value,
        Reason.APPLY_FAILED.value,
        Reason.PRUNE_FAILED.value,
        Reason.INVENTORY_FAILED.value,
        Reason.DEPENDENCY_NOT_READY.value,
    }
)


def sync_identity(namespace: str, name: str) -> str:
    """The sync label value (and the controller's key) of the Sync ``namespace/name``."""
    joined = f"{namespace}.{name}"
    if len(joined) <= _LABEL_MAX:
        return joined
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:16]
    return f"{name[:40].rstrip('-')}-{digest}"


def inventory_name(name: str) -> str:
    """The inventory ConfigMap of a Sync, in the Sync's own namespace."""
    return f"aioreconcile-inventory-{name}"


def reconcile_request(
    at: datetime, hint: str | None, *, traceparent: str | None = None
) -> JsonObject:
    """The merge patch that records a "reconcile now" on a Sync: ``requestedAt`` (``at``,
    RFC 3339 with microseconds, so two deliveries are two requests), the commit a webhook
    named and the webhook request's span (``traceparent``, W3C), which the reconcile links to.
    A hint that is not a full commit id (40 or 64 lowercase hex digits), or a traceparent not of
    the W3C shape, is written as null, which also removes the one of an earlier request: a
    request never carries another's. Flux's notification-controller records a delivery the
    same way (it sets ``reconcile.fluxcd.io/requestedAt`` on each target object), without the
    hint or the trace."""
    annotations = {
        REQUESTED_AT_ANNOTATION: at.isoformat(timespec="microseconds"),
        REVISION_HINT_ANNOTATION: hint if is_commit_sha(hint) else None,
        REQUEST_TRACE_ANNOTATION: traceparent if is_traceparent(traceparent) else None,
    }
    return {"metadata": {"annotations": annotations}}


def request_trace(annotations: Mapping[str, Any] | None) -> str | None:
    """The webhook request's traceparent recorded with a request, when it has the W3C shape."""
    value = (annotations or {}).get(REQUEST_TRACE_ANNOTATION)
    return value if isinstance(value, str) and is_traceparent(value) else None


def requested_at(annotations: Mapping[str, Any] | None) -> str | None:
    """The ``requestedAt`` request on a Sync when it can be honoured: a string of 1 to
    ``REQUESTED_AT_MAX`` printable characters (no control, format or separator character, no
    backslash: it is copied into ``status.lastHandledReconcileAt`` and may be printed). Flux's
    ``flux reconcile`` writes an RFC 3339 time, ours too; anything of that kind passes."""
    value = (annotations or {}).get(REQUESTED_AT_ANNOTATION)
    if not isinstance(value, str) or not 0 < len(value) <= REQUESTED_AT_MAX:
        return None
    return value if printable(value) == value else None


def revision_hint(annotations: Mapping[str, Any] | None) -> str | None:
    """The hinted commit on a Sync, when it is a full commit id; anything else is ignored (the
    annotation is anyone's with ``patch`` on Syncs: it reaches logs, traces and a metric)."""
    value = (annotations or {}).get(REVISION_HINT_ANNOTATION)
    return value if isinstance(value, str) and is_commit_sha(value) else None


def _metadata(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _name_ref(reader: _Reader, value: object, path: str) -> str | None:
    data = reader.mapping(value, path, {"name"})
    if not data:
        return None
    return reader.field(data, path, "name", str, required=True)


def sync_from_resource(obj: Mapping[str, Any]) -> SyncSpec:
    """The ``SyncSpec`` of a Sync object; raise ConfigError naming every bad ``spec.*`` field.

    The API server has already applied the CRD's schema (defaults, CEL rules); this checks
    again with the file format's rules, so a Sync written before a rule existed is refused
    here with the same message instead of being half-applied."""
    namespace, name = _metadata(obj)
    reader = _Reader()
    spec = reader.mapping(obj.get("spec"), "spec", set(_SPEC_KEYS))
    source = reader.mapping(spec.get("source"), "spec.source", set(_SOURCE_KEYS))
    verify = reader.mapping(
        source.get("verify"), "spec.source.verify", {"mode", "secretRef", "configMapRef"}
    )
    file_source: dict[str, object] = {k: source[k] for k in _PLAIN_SOURCE_KEYS if k in source}
    if "mode" in verify:
        # Checked here; the keys are by reference below, not the file format's files.
        file_source["verify"] = {"mode": "none"} if verify["mode"] == "none" else None
    file_sync: dict[str, object] = {"name": name, "source": file_source or None}
    file_sync |= {k: spec[k] for k in (*_PLAIN_SPEC_KEYS, *_PLAIN_SPEC_KEYS_2) if k in spec}
    labels = (obj.get("metadata") or {}).get("labels")
    if labels:
        file_sync["labels"] = labels
    account = reader.field(spec, "spec", "serviceAccountName", str)
    if account:
        file_sync["serviceAccount"] = f"{namespace}/{account}"
    parsed = _sync(reader, file_sync, "spec")

    secret = _name_ref(reader, source.get("secretRef"), "spec.source.secretRef")
    auth = (
        GitAuth(kind=AuthKind.SECRET, secret=DataRef("Secret", namespace, secret))
        if secret
        else GitAuth()
    )
    mode = reader.choice(verify, "spec.source.verify", "mode", str, "none")
    keys: DataRef | None = None
    key_secret = _name_ref(reader, verify.get("secretRef"), "spec.source.verify.secretRef")
    key_map = _name_ref(reader, verify.get("configMapRef"), "spec.source.verify.configMapRef")
    if key_secret and key_map:
        reader.fail("spec.source.verify", "give secretRef or configMapRef, not both")
    if key_secret or key_map:
        keys = DataRef(
            "Secret" if key_secret else "ConfigMap", namespace, str(key_secret or key_map)
        )
    if mode not in ("none", "gpg", "ssh"):
        reader.fail("spec.source.verify.mode", f"{mode!r} is not one of none, gpg, ssh")
    elif mode != "none" and keys is None:
        reader.fail(
            "spec.source.verify", "mode gpg or ssh needs secretRef or configMapRef naming the keys"
        )
    depends = _depends_on(reader, spec.get("dependsOn"), namespace, name)
    if reader.problems:
        raise ConfigError(f"Sync {namespace}/{name}", reader.problems)
    verification = parsed.source.verify
    if mode != "none":
        verification = replace(verification, mode=VerifyMode(mode), keys=keys)
    return replace(
        parsed,
        name=sync_identity(namespace, name),
        namespace=namespace,
        source=replace(parsed.source, auth=auth, verify=verification),
        depends_on=depends,
    )


def _depends_on(reader: _Reader, value: object, namespace: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        reader.fail("spec.dependsOn", f"must be a list, not {type(value).__name__}")
        return ()
    found: list[str] = []
    for index, item in enumerate(value):
        path = f"spec.dependsOn[{index}]"
        data = reader.mapping(item, path, {"name", "namespace"})
        other = reader.field(data, path, "name", str, required=True)
        other_namespace = reader.field(data, path, "namespace", str) or namespace
        if other is None:
            continue
        if (other_namespace, other) == (namespace, name):
            reader.fail(path, "a Sync cannot depend on itself")
            continue
        found.append(sync_identity(other_namespace, other))
    return tuple(found)


def _condition(
    kind: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int,
    now: str,
    previous: Mapping[str, Mapping[str, Any]],
) -> JsonObject:
    before = previous.get(kind) or {}
    same = before.get("status") == status
    return {
        "type": kind,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": before.get("lastTransitionTime", now) if same else now,
        "reason": reason,
        "message": message[:32768],
    }


def sync_status(
    view: Mapping[str, Any],
    *,
    generation: int,
    handled_at: str | None,
    previous: Mapping[str, Any] | None,
    now: str,
) -> JsonObject:
    """The Sync's ``status`` for a sync's state (``SyncState.view()``, already redacted).

    kstatus: ``Ready`` True/False/Unknown; ``Reconciling`` True while work is under way or a
    retry is coming; ``Stalled`` True when only a change (a new commit, an edit) can help.
    ``lastTransitionTime`` moves only when a condition's status changes, so an unchanged state
    yields an equal status and the writer has nothing to write."""
    previous = previous or {}
    before = {
        str(c.get("type")): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)
    }
    reason = view.get("reason")
    message = str(view.get("message") or "")
    condition = partial(_condition, generation=generation, now=now, previous=before)
    conditions: list[JsonObject]
    if reason is None and view.get("suspended"):
        # Never reconciled at this spec and told not to: nothing is in progress.
        suspended = "suspended: nothing is applied until it is resumed"
        conditions = [condition("Ready", "Unknown", "Suspended", suspended)]
    elif reason is None or reason == Reason.PROGRESSING.value:
        waiting = message or "reconciliation in progress"
        conditions = [
            condition("Ready", "Unknown", Reason.PROGRESSING.value, waiting),
            condition("Reconciling", "True", Reason.PROGRESSING.value, waiting),
        ]
    elif reason == Reason.SUCCEEDED.value:
        # The last apply's change summary, for ``kubectl get`` and ``aioreconcile reconcile``.
        changes = view.get("changes")
        if isinstance(changes, str):
            message = f"{message} ({changes or 'no changes'})"
        conditions = [condition("Ready", "True", reason, message)]
    elif reason in _RETRIED:
        conditions = [
            condition("Ready", "False", str(reason), message),
            condition("Reconciling", "True", str(reason), message),
        ]
    else:
        conditions = [
            condition("Ready", "False", str(reason), message),
            condition("Stalled", "True", str(reason), message),
        ]
    status: JsonObject = {"observedGeneration": generation, "conditions": conditions}
    for key in ("lastAppliedRevision", "lastAttemptedRevision", "inventorySize", "driftHeals"):
        if view.get(key) is not None:
            status[key] = view[key]
    if handled_at is not None:
        status["lastHandledReconcileAt"] = handled_at
    return status


def status_changed(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether writing ``current`` would change anything the Sync's status shows."""
    return {k: (previous or {}).get(k) for k in current} != dict(current)


def receiver_from_resource(obj: Mapping[str, Any], *, token: str) -> ReceiverSpec:
    """The ``ReceiverSpec`` of a Receiver object whose Secret's ``token`` is ``token``.

    Its name (the route's last path segment) is the digest of ``receivers.webhook_path``;
    ``syncs`` become sync identities in the Receiver's namespace, and ``namespace`` keeps a
    selector inside it. ``matchExpressions`` are refused, not ignored: the model has
    ``matchLabels`` only (a receiver must never trigger more than it says)."""
    namespace, name = _metadata(obj)
    reader = _Reader()
    spec = reader.mapping(
        obj.get("spec"), "spec", {"provider", "secretRef", "syncs", "selector", "maxBodyBytes"}
    )
    provider = reader.choice(spec, "spec", "provider", Provider, Provider.GENERIC_HMAC)
    if "provider" not in spec:
        reader.fail("spec.provider", "required")
    max_body = reader.field(spec, "spec", "maxBodyBytes", int, 5 * 1024 * 1024) or 0
    if max_body <= 0:
        reader.fail("spec.maxBodyBytes", "must be positive")
    names = reader.field(spec, "spec", "syncs", list) or []
    syncs: list[str] = []
    for index, item in enumerate(names):
        if isinstance(item, str):
            syncs.append(sync_identity(namespace, item))
        else:
            reader.fail(f"spec.syncs[{index}]", "must be a Sync name")
    selector_data = reader.mapping(
        spec.get("selector"), "spec.selector", {"matchLabels", "matchExpressions"}
    )
    if selector_data.get("matchExpressions"):
        reader.fail(
            "spec.selector.matchExpressions",
            "not supported yet: select Syncs with matchLabels or name them in syncs",
        )
    selector = _labels(reader, selector_data.get("matchLabels"), "spec.selector.matchLabels")
    if not syncs and not selector:
        reader.fail("spec", "names no Syncs: set syncs or selector.matchLabels")
    if reader.problems:
        raise ConfigError(f"Receiver {namespace}/{name}", reader.problems)
    path = webhook_path(name, namespace, token=token)
    return ReceiverSpec(
        name=path.removeprefix(WEBHOOK_PATH_PREFIX),
        provider=provider,
        max_body_bytes=max_body,
        syncs=tuple(syncs),
        selector=selector,
        namespace=namespace,
    )


def receiver_status(
    *,
    generation: int,
    path: str | None,
    problem: str | None,
    reason: str,
    previous: Mapping[str, Any] | None,
    now: str,
) -> JsonObject:
    """A Receiver's status: Ready True with its path, or False with why it is not served."""
    before = {
        str(c.get("type")): c
        for c in (previous or {}).get("conditions") or []
        if isinstance(c, Mapping)
    }
    message = f"serving {path}" if problem is None else problem
    status = "True" if problem is None else "False"
    ready = _condition(
        "Ready", status, reason, message, generation=generation, now=now, previous=before
    )
    result: JsonObject = {"observedGeneration": generation, "conditions": [ready]}
    if path is not None:
        result["webhookPath"] = path
    return result
