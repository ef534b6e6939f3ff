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
PRUNE_ANNOTATION: Final = f"{DOMAIN}/prune"
RECONCILE_ANNOTATION: Final = f"{DOMAIN}/reconcile"
DISABLED: Final = "disabled"
