"""Shards held through Leases: one Lease per shard, one member Lease per live replica.

Every retry period (jittered) a replica:

1. LISTs its shard set's Leases (one request, by label: every shard Lease and every member
   Lease) and judges each on its own clock, as ``LeaseElector`` judges its own Lease
   (client-go: a holder is dead once its record has not changed for its lease duration). So a
   survivor has been watching the dead replica's shard Leases all along and takes them over
   the moment they expire, not one lease duration after it first looks;
2. renews its own member Lease (the heartbeat Argo CD keeps in a ConfigMap);
3. computes from the live members and the shards' current holders who should hold each shard
   (``engine.sharding.assign``, sticky: a live holder within its share keeps its shard; the
   same answer on every replica that sees the same Leases);
4. acquires or renews the shards assigned to it (``LeaseElector.step``: a PUT guarded by the
   resourceVersion, client-go's rules), and gives back, gracefully, those no longer assigned
   to it (a member joined): their work is cancelled first (``on_lose`` returns once it ended),
   then the Lease is released (empty holder), so the new owner takes it at its next round.

A shard that could not be renewed within the renew deadline, or that another replica holds
now, is lost: ``on_lose`` cancels its work at once, and the process goes on with its other
shards. A replica that could not renew its member Lease within the renew deadline (the
apiserver unreachable or very slow) gives up every shard and keeps renewing its member Lease
alone; once it succeeds it is a member again and is given its share. Unlike the single leader
(which exits, as controller-runtime's managers do) it does not exit: its shards' deadlines
already stop every write, and a slow apiserver would otherwise restart every replica at once,
each coming back with cold watch and Git caches.

Costs per retry period: one LIST and one member PUT per replica, one PUT per shard held.
"""

import logging
import random as _random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Final

import anyio
import anyio.abc

from aioreconcile.adapters.kube.leasing import DEFAULT_TIMINGS, LeaseElector, utc_now
from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.leadership import LeaseTimings, acquire_delay, expired
from aioreconcile.engine.model import JsonObject
from aioreconcile.engine.sharding import (
    MAX_SHARDS,
    ROLE_LABEL,
    SET_LABEL,
    SHARD_INDEX_LABEL,
    assign,
    member_lease_name,
    shard_lease_name,
)

logger = logging.getLogger(__name__)

_GC_LEASES: Final = 10  # a member Lease expired this many lease durations is deleted


class ShardElector:
    """This replica (``identity``) among the holders of ``shards`` shards of ``name``.

    ``on_gain(shard)`` is called when a shard's Lease was taken (start its work);
    ``on_lose(shard)`` when it was lost or is about to be given back, and must return only
    once that shard's work has stopped."""

    def __init__(
        self,
        transport: KubeTransport,
        *,
        namespace: str,
        name: str,
        identity: str,
        shards: int,
        timings: LeaseTimings = DEFAULT_TIMINGS,
        on_gain: Callable[[int], None],
        on_lose: Callable[[int], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utc_now,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"the number of shards must be 1..{MAX_SHARDS}, got {shards}")
        self._transport = transport
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.shards = shards
        self.timings = timings
        self._on_gain = on_gain
        self._on_lose = on_lose
        self._clock = clock
        self._random = random

        def elector(lease: str, labels: dict[str, str]) -> LeaseElector:
            return LeaseElector(
                transport,
                namespace=namespace,
                name=lease,
                identity=identity,
                timings=timings,
                clock=clock,
                wall=wall,
                random=random,
                labels={SET_LABEL: name} | labels,
            )

        self._member = elector(member_lease_name(name, identity), {ROLE_LABEL: "member"})
        self._shards = [
            elector(shard_lease_name(name, k), {ROLE_LABEL: "shard", SHARD_INDEX_LABEL: str(k)})
            for k in range(shards)
        ]
        self._peers: dict[str, LeaseElector] = {}  # other members' Leases, by Lease name
        self._held: set[int] = set()
        self._transitions = [anyio.Lock() for _ in range(shards)]  # gain/lose of each shard
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    def __str__(self) -> str:
        return f"shards of Lease/{self.namespace}/{self.name}"

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    @property
    def member(self) -> bool:
        """Whether our member Lease is held (we count among the live replicas)."""
        return self._member.leading

    def members(self) -> list[str]:
        """The live members, ourselves included while our member Lease is held."""
        now = self._clock()
        live = {
            peer.holder
            for peer in self._peers.values()
            if peer.record is not None and peer.holder and not _expired(peer, now)
        }
        if self._member.leading:
            live.add(self.identity)
        return sorted(live)

    def holders(self) -> dict[int, str]:
        """Each shard's holder as last seen ("" if none)."""
        return {k: elector.holder for k, elector in enumerate(self._shards)}

    # --- the loop --------------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Rounds until cancelled; ``started`` after the first round. Cancelled (a graceful
        stop): the held shards' work is stopped, their Leases released and our member Lease
        deleted, so the survivors take the shards at their next round."""
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._watch_deadlines)
                started = False
                while True:
                    await self._round()
                    if not started:
                        task_status.started()
                        started = True
                    await anyio.sleep(acquire_delay(self.timings, random=self._random()))
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop()

    async def _watch_deadlines(self) -> None:
        """Give up each held shard the moment its renew deadline passes, whatever the round
        is doing (waiting on a slow LIST or PUT): its work stops before the Lease can expire
        on anyone's clock. Our member Lease past its deadline: every shard is given up, and
        the rounds go on renewing the member Lease alone until the apiserver answers again."""
        while True:
            now = self._clock()
            deadlines = [e.deadline for e in (self._member, *self._shards) if e.deadline]
            wait = self.timings.retry_period_s
            if deadlines:
                wait = min(wait, max(min(deadlines) - now, 0.0))
            await anyio.sleep(wait)
            now = self._clock()
            if self._member.deadline is not None and now >= self._member.deadline:
                self._member.abandon("could not renew within the renew deadline")
                await self._stop_shards(release=False)
            for shard, elector in enumerate(self._shards):
                if elector.deadline is not None and now >= elector.deadline:
                    elector.abandon("could not renew within the renew deadline")
                    await self._lost(shard)

    async def _round(self) -> None:
        await self._list()
        was_member = self._member.leading
        if not await self._member.step():
            if was_member:  # not counted any more: the others will share our shards
                await self._stop_shards(release=False)
            return
        if not was_member:
            # Not counted yet, or only just: replicas that started with us are seen at the
            # next LIST, so take no shard before it (no shard taken and given back at once).
            return
        owners = assign(self.shards, self.members(), self.holders())
        async with anyio.create_task_group() as tasks:
            for shard in range(self.shards):
                tasks.start_soon(self._keep, shard, owners.get(shard) == self.identity)

    async def _keep(self, shard: int, mine: bool) -> None:
        elector = self._shards[shard]
        if not mine:
            if elector.leading:
                logger.info("giving a shard back", extra={"shard": shard, "lease": str(elector)})
                await self._lost(shard)
                await elector.release()
            return
        if await elector.step():
            async with self._transitions[shard]:  # after a loss under way has ended
                if elector.leading and shard not in self._held:
                    self._held.add(shard)
                    logger.info("holding a shard", extra={"shard": shard, "lease": str(elector)})
                    self._on_gain(shard)
        elif shard in self._held:
            await self._lost(shard)

    async def _lost(self, shard: int) -> None:
        """Stop the shard's work; a renewal that lands meanwhile (late, after the watchdog gave
        the shard up) starts it again only once this has ended."""
        async with self._transitions[shard]:
            if shard in self._held:
                self._held.discard(shard)
                await self._on_lose(shard)

    async def _list(self) -> None:
        """Read every Lease of the set in one request; judge each on our clock."""
        try:
            response = await self._transport.request(
                "GET",
                self._path,
                params={"labelSelector": f"{SET_LABEL}={self.name}"},
                time_limit=self.timings.renew_deadline_s / 2,
            )
        except AioreconcileError as e:
            logger.warning("could not list the shard Leases", extra={"error": str(e)})
            return
        shards: dict[int, JsonObject] = {}
        members: dict[str, JsonObject] = {}
        for lease in response.body.get("items") or []:
            metadata = lease.get("metadata") or {}
            labels = metadata.get("labels") or {}
            role, name = labels.get(ROLE_LABEL), str(metadata.get("name") or "")
            index = str(labels.get(SHARD_INDEX_LABEL, ""))
            if role == "shard" and index.isdigit() and int(index) < self.shards:
                shards[int(index)] = lease
            elif role == "member" and name and name != self._member.name:
                members[name] = lease
        for k, elector in enumerate(self._shards):
            elector.see(shards.get(k))
        for name in self._peers.keys() - members.keys():
            del self._peers[name]
        for name, lease in members.items():
            peer = self._peers.get(name)
            if peer is None:
                holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
                peer = self._peers[name] = LeaseElector(
                    self._transport,
                    namespace=self.namespace,
                    name=name,
                    identity=f"{self.identity}/observer",  # never written as
                    timings=self.timings,
                    clock=self._clock,
                )
                logger.debug("member seen", extra={"lease": name, "holder": holder})
            peer.see(lease)
        await self._collect()

    async def _collect(self) -> None:
        """Delete member Leases of replicas long gone (killed, so never deleted by
        themselves); the holder of shard 0 does it, so only one replica tries."""
        if 0 not in self._held:
            return
        now = self._clock()
        for name, peer in list(self._peers.items()):
            observed = peer.observed
            if observed is None:
                continue
            gone_for = now - observed.since - observed.record.duration_s
            if gone_for >= _GC_LEASES * self.timings.lease_duration_s:
                logger.info(
                    "deleting the member Lease of a replica long gone", extra={"lease": name}
                )
                await peer.delete()
                self._peers.pop(name, None)

    # --- stopping --------------------------------------------------------------------------------

    async def _stop_shards(self, *, release: bool) -> None:
        for shard in sorted(self._held):
            await self._lost(shard)
        if release:
            for elector in self._shards:
                if elector.leading:
                    await elector.release()
        else:
            for elector in self._shards:
                if elector.leading:
                    elector.abandon("this replica's member Lease was lost")

    async def _stop(self) -> None:
        with anyio.move_on_after(self.timings.renew_deadline_s * 2):
            await self._stop_shards(release=self._member.leading)
            if self._member.leading:
                await self._member.delete()


def _expired(elector: LeaseElector, now: float) -> bool:
    observed = elector.observed
    return observed is None or expired(observed, now=now)


__all__ = ["ShardElector"]
