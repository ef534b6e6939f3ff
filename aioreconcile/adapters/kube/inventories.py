"""The inventory of a CLI/standalone sync, kept in a ConfigMap the caller names.

The in-cluster CRD will keep it in its status; a ConfigMap keeps ``aioreconcile apply --prune``
usable with nothing installed. The ConfigMap is server-side applied by our field manager like
everything else, so a second writer is visible in its managedFields.

A missing ConfigMap is not an error: ``load`` returns None and the sync rebuilds the inventory
from the objects' labels (``reactor.syncing``). One that is there but unreadable (hand-edited)
is an ``InventoryError`` naming the key and the problem, and is left as it is: overwriting it
would forget the objects it lists. Deleting it is the way out.
"""

from typing import Final

import orjson

from aioreconcile.adapters.kube.transport import APPLY_PATCH, KubeTransport
from aioreconcile.engine.errors import InventoryError, NotFoundError
from aioreconcile.engine.inventory import Inventory, inventory_key
from aioreconcile.engine.naming import FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE

_ENTRIES_KEY: Final = "entries.json"
_REVISION_KEY: Final = "revision"
_WAY_OUT: Final = "; fix it, or delete the ConfigMap to rebuild it from the objects' labels"


class ConfigMapInventoryStore:
    """Load and save one inventory in ``namespace/name``."""

    def __init__(self, transport: KubeTransport, *, namespace: str, name: str) -> None:
        self._transport = transport
        self.namespace = namespace
        self.name = name
        self._path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
        self.key = inventory_key(namespace, name)

    def __str__(self) -> str:
        return f"ConfigMap/{self.namespace}/{self.name}"

    async def load(self) -> Inventory | None:
        """The stored inventory, or None when there is no ConfigMap (first apply, or deleted)."""
        try:
            stored = await self._transport.request("GET", self._path)
        except NotFoundError:
            return None
        data = stored.body.get("data")
        raw = data.get(_ENTRIES_KEY) if isinstance(data, dict) else None
        if raw is None:
            raise InventoryError(f"data.{_ENTRIES_KEY} is missing{_WAY_OUT}")
        try:
            entries = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InventoryError(f"data.{_ENTRIES_KEY} is not JSON ({e}){_WAY_OUT}") from e
        try:
            return Inventory.from_entries(entries)
        except InventoryError as e:
            raise InventoryError(f"data.{_ENTRIES_KEY}: {e}{_WAY_OUT}") from e

    async def save(self, inventory: Inventory, *, revision: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
            },
            "data": {
                _ENTRIES_KEY: orjson.dumps(inventory.to_entries()).decode(),
                _REVISION_KEY: revision,
            },
        }
        await self._transport.request(
            "PATCH",
            self._path,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=body,
            content_type=APPLY_PATCH,
        )
