"""Sharding: which shard a Sync belongs to, and which live replica should hold which shard.

Learnt from:

* Flux (``sharding.fluxcd.io/key`` and ``--watch-label-selector``): a shard is named by a label
  on the object, so an operator can pin a Sync to a shard. Flux stops there (the label is the
  only placement, each shard a separately deployed controller); here the label is optional and
  an unlabelled Sync is placed by a hash, and the replicas share the shards between them.
* Argo CD's application-controller (``controller/sharding/sharding.go``): a cluster is placed by
  an FNV-32a hash of its id modulo the replica count (the "legacy" distribution), or round-robin;
  replicas announce themselves with a heartbeat in a ConfigMap and take over the shard of one
  whose heartbeat is older than the heartbeat interval. We keep the stable hash (FNV-1a, 64
  bit, never Python's salted ``hash()``), put the heartbeat in one member Lease per replica, and
  judge it like every Lease, on our own clock (``engine.leadership``).
* Rendezvous (highest-random-weight) hashing, Thaler & Ravishankar 1996, with bounded loads
  (Mirrokni, Thorup, Zadimoghaddam 2018): each shard prefers the live member with the highest
  hash of (member, shard), but no member takes more than ceil(S / N) shards. Plain rendezvous
  with 3 shards and 3 replicas leaves a replica idle more often than not; the bound keeps the
  spread even while a member joining or leaving still moves few shards.

Everything here is a function of data; the Leases are written by ``adapters.kube.sharding``.
"""

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

SHARD_LABEL: Final = "sharding.aioreconcile.dev/key"
"""On a Sync: pins it to shard ``k`` (a decimal 0 <= k < shards) instead of its hash's."""

SET_LABEL: Final = "sharding.aioreconcile.dev/set"
"""On our Leases: the leader election id they belong to (one LIST reads all of them)."""
ROLE_LABEL: Final = "sharding.aioreconcile.dev/role"
"""On our Leases: ``shard`` (one per shard) or ``member`` (one per live replica)."""
SHARD_INDEX_LABEL: Final = "sharding.aioreconcile.dev/shard"
"""On a shard Lease: its shard number."""

MAX_SHARDS: Final = 256

_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_MASK: Final = (1 << 64) - 1


def fnv1a_64(data: bytes) -> int:
    """FNV-1a, 64 bit: stable across processes and versions (Python's ``hash`` of a str is
    salted per process, so two replicas would disagree)."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & _MASK
    return value


@dataclass(frozen=True)
class Placement:
    """A Sync's shard, and why its shard label was not used when it was refused."""

    shard: int
    problem: str | None = None


def place(namespace: str, name: str, labels: dict[str, str] | None, shards: int) -> Placement:
    """The shard of the Sync ``namespace/name``: its ``sharding.aioreconcile.dev/key`` label if
    it has one, else FNV-1a of ``namespace/name`` modulo ``shards``. A label that is not a
    shard number keeps the Sync on its hash's shard, with a ``problem`` to show in its status,
    so that exactly one replica still answers for it."""
    if shards < 1:
        raise ValueError(f"the number of shards must be at least 1, got {shards}")
    hashed = fnv1a_64(f"{namespace}/{name}".encode()) % shards
    value = (labels or {}).get(SHARD_LABEL)
    if value is None:
        return Placement(hashed)
    text = str(value)
    if text.isascii() and text.isdigit() and int(text) < shards and str(int(text)) == text:
        return Placement(int(text))
    return Placement(
        hashed,
        f"metadata.labels[{SHARD_LABEL}]: {text!r} is not a shard number 0..{shards - 1}; "
        "the Sync is not reconciled until the label is fixed or removed",
    )


def assign(
    shards: int,
    members: list[str] | set[str] | frozenset[str],
    holders: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """Which member should hold each shard: rendezvous hashing with bounded loads, sticky.

    A shard whose current holder (``holders``, from the shard Leases; "" for none) is a live
    member stays with it while that member holds fewer than ceil(shards / members): moving a
    shard costs a reconcile of each of its Syncs on the new holder and a gap while the old one
    gives it back, so a member leaving moves its own shards only (without this, the bound
    could also move a survivor's shard to another survivor: two shards reconciled from scratch
    for one kill). The other shards are then placed in order of their best weight (the most
    decided first), each on its highest-weight member that holds fewer than that bound so far
    (Kafka's ``StickyAssignor`` keeps partitions with their consumers the same way). Every
    member computing this over the same members and holders gets the same answer. No member:
    no owner."""
    live = sorted(set(members))
    if not live:
        return {}
    capacity = math.ceil(shards / len(live))
    ranked = {shard: _ranked(live, shard) for shard in range(shards)}
    order = sorted(range(shards), key=lambda s: (_weight(ranked[s][0], s), s), reverse=True)
    load = dict.fromkeys(live, 0)
    owners: dict[int, str] = {}
    for shard in order:
        holder = (holders or {}).get(shard, "")
        if holder in load and load[holder] < capacity:
            owners[shard] = holder
            load[holder] += 1
    for shard in order:
        if shard in owners:
            continue
        for member in ranked[shard]:
            if load[member] < capacity:
                owners[shard] = member
                load[member] += 1
                break
    return owners


def _ranked(members: list[str], shard: int) -> list[str]:
    """The members by their weight for ``shard``, highest first (ties by name)."""
    return sorted(members, key=lambda member: (_weight(member, shard), member), reverse=True)


def _weight(member: str, shard: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{member}\0{shard}".encode()).digest()[:8], "big")


def shard_lease_name(election: str, shard: int) -> str:
    return f"{election}-shard-{shard}"


def member_lease_name(election: str, identity: str) -> str:
    """One Lease per replica; its name is derived (identities such as ``host_1a2b`` are no
    valid object names), the identity itself is the Lease's holder."""
    return f"{election}-member-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


__all__ = [
    "MAX_SHARDS",
    "ROLE_LABEL",
    "SET_LABEL",
    "SHARD_INDEX_LABEL",
    "SHARD_LABEL",
    "Placement",
    "assign",
    "fnv1a_64",
    "member_lease_name",
    "place",
    "shard_lease_name",
]
