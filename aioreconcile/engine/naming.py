"""The names on the cluster that every part of aioreconcile agrees on (see docs/architecture.md)."""

from typing import Final

DOMAIN: Final = "aioreconcile.dev"
API_GROUP: Final = DOMAIN
API_VERSION: Final = f"{API_GROUP}/v1alpha1"
FIELD_MANAGER: Final = "aioreconcile"

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "aioreconcile"
SYNC_LABEL: Final = f"{DOMAIN}/sync"
REVISION_ANNOTATION: Final = f"{DOMAIN}/revision"
TRACEPARENT_ANNOTATION: Final = f"{DOMAIN}/traceparent"
INVENTORY_ANNOTATION: Final = f"{DOMAIN}/inventory"
"""On an applied object: ``<namespace>/<name>`` of the inventory ConfigMap of the sync that
applied it. Sync names are chosen by people and may repeat across controllers; an inventory's
place cannot, so a rebuild from labels takes only objects that name its own inventory."""
PRUNE_ANNOTATION: Final = f"{DOMAIN}/prune"
RECONCILE_ANNOTATION: Final = f"{DOMAIN}/reconcile"
ADOPT_ANNOTATION: Final = f"{DOMAIN}/adopt"
"""On a desired object: take it over even though it carries another sync's label."""
FORCE_ANNOTATION: Final = f"{DOMAIN}/force"
"""On a desired object: recreate it when the server refuses a change of an immutable field."""
DISABLED: Final = "disabled"
ENABLED: Final = "enabled"

_LABEL_VALUE_MAX: Final = 63


def is_valid_label_value(value: str) -> bool:
    """Kubernetes label value: at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric."""
    if not value or len(value) > _LABEL_VALUE_MAX:
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return set(value) <= allowed and value[0].isalnum() and value[-1].isalnum()
