"""Only the leader writes: run the controller's work while an ``Elector`` says we lead.

As controller-runtime's manager with leader election: a standby runs everything that only
reads (the watches; the webhook listener accepts deliveries and the queue keeps them) and
starts the work that writes (the queue's workers, the pollers) the moment it is elected. A
leader that loses its Lease stops that work at once (cancelled, mid-request if need be) and
``lead`` raises ``LeadershipLost``: the process exits non-zero and comes back as a standby,
with no state from its time as leader to doubt. A graceful stop cancels the work first and
only then releases the Lease (client-go's warning on ``ReleaseOnCancel``: nothing guarded by
the Lease may still run when a standby takes it).

While waiting, ``warm_watches`` opens watches on the kinds the current leader's inventories
list, so that after a takeover the first reconcile's watches are synced already: a failover
does not start with a cold LIST of every managed kind.
"""

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import anyio

from aioreconcile.engine.errors import AioreconcileError, LeadershipLost
from aioreconcile.engine.model import ObjectRef
from aioreconcile.reactor.ports import Elector, InventoryStore, Watcher

logger = logging.getLogger(__name__)

_WARM_SYNC_TIMEOUT_S = 30.0


async def lead(
    elector: Elector,
    work: Callable[[], Awaitable[None]],
    *,
    standby: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run ``standby`` until elected, then ``work`` while we lead.

    Returns only if ``work`` does (the Lease is released first). Raises ``LeadershipLost`` once
    the Lease could not be kept (``work`` is cancelled by then). When cancelled (a graceful
    stop), ``work`` is cancelled and has ended before the Lease is released.
    """
    async with anyio.create_task_group() as waiting:
        if standby is not None:
            waiting.start_soon(standby)
        await elector.acquire()
        waiting.cancel_scope.cancel()
    lost = False
    try:
        async with anyio.create_task_group() as leading:

            async def keep() -> None:
                nonlocal lost
                await elector.hold()
                lost = True
                leading.cancel_scope.cancel()  # stop writing at once

            leading.start_soon(keep)
            await work()
            leading.cancel_scope.cancel()
    finally:
        if not lost:
            with anyio.CancelScope(shield=True):
                await elector.release()
    if lost:
        raise LeadershipLost(f"lost the leadership of {elector}: stopped writing")


async def warm_watches(
    inventories: Mapping[str, InventoryStore],
    watcher: Watcher,
    *,
    every_s: float,
    on_warm: Callable[[], None] | None = None,
) -> None:
    """While standing by: every ``every_s``, read the syncs' inventories (GETs only) and watch
    the kinds they list; ``on_warm`` once the first round's watches have listed. An inventory
    that cannot be read is skipped: a standby's caches are an optimisation, never a gate."""
    while True:
        kinds: list[ObjectRef] = []
        for name, store in inventories.items():
            try:
                inventory = await store.load()
            except AioreconcileError as e:
                logger.info(
                    "standby: could not read an inventory", extra={"sync": name, "error": str(e)}
                )
                continue
            if inventory is not None:
                kinds.extend(inventory.entries)
        watcher.watch(kinds)
        with anyio.move_on_after(_WARM_SYNC_TIMEOUT_S):
            await watcher.wait_synced()
        watched = len({(r.group, r.kind) for r in kinds})
        logger.debug("standby: watches warm", extra={"kinds": watched})
        if on_warm is not None:
            on_warm()
            on_warm = None
        await anyio.sleep(every_s)


__all__ = ["lead", "warm_watches"]
