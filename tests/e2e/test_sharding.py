"""Three `aioreconcile run --shards 3` processes (CRD mode) and 300 Syncs against the real
apiserver and a real git daemon: every Sync becomes Ready, the Syncs spread over the replicas,
no shard is held by two replicas at once (from their logs), and after a kill -9 of a replica
every Sync of its shard is reconciled again by a survivor (a drift made after the kill is
healed) soon after the lease duration. Timed over a few kills."""

import itertools
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile.engine.sharding import place
from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.replicas import kill_all, start_replica, until
from tests.e2e.test_crd_mode import GROUP, VERSION, crds, kubectl, sync
from tests.e2e.test_leader_election import Replica
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration

__all__ = ["crds"]

SYNCS, SHARDS = 300, 3
LEASE_S, RENEW_S, RETRY_S = 8, 6.0, 1.0  # tuned for a 2-core machine shared by seven
KILLS = 3


@dataclass
class Fleet:
    kube: Kube
    namespace: str
    directory: Path
    replicas: list[Replica] = field(default_factory=list)
    killed: dict[str, float] = field(default_factory=dict)  # identity -> wall time of the kill

    async def start(self, identity: str) -> Replica:
        started = await start_replica(
            self.kube,
            self.namespace,
            self.directory,
            identity,
            timings=(LEASE_S, RENEW_S, RETRY_S),
            inventory_namespace=self.namespace,
            extra_args=[
                "--watch-namespace",
                self.namespace,
                "--concurrency",
                "4",
                "--shards",
                str(SHARDS),
            ],
        )
        replica = Replica(identity, started.process, started.ops, started.log)
        self.replicas.append(replica)
        return replica

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.identity not in self.killed]

    async def kill(self, replica: Replica) -> None:
        replica.process.kill()
        self.killed[replica.identity] = time.time()
        await replica.process.wait()

    def held(self) -> dict[str, list[int]]:
        """Each live replica's held shards, from its /status."""
        found: dict[str, list[int]] = {}
        for replica in self.live():
            try:
                found[replica.identity] = replica.status()["sharding"]["held"]
            except (AssertionError, KeyError, ValueError):
                found[replica.identity] = []
        return found

    def balanced(self) -> bool:
        held = self.held()
        return sorted(s for shards in held.values() for s in shards) == list(range(SHARDS)) and (
            len(held) < SHARDS or all(len(shards) == 1 for shards in held.values())
        )

    def holding_intervals(self) -> dict[int, list[tuple[float, float, str]]]:
        """Per shard, (from, to, replica) from the replicas' logs: "holding a shard" until
        "shard given up", the kill, or now."""
        intervals: dict[int, list[tuple[float, float, str]]] = {}
        now = time.time()
        for replica in self.replicas:
            since: dict[int, float] = {}
            for line in replica.log.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                stamp = datetime.fromisoformat(entry["time"]).timestamp()
                if entry["message"] == "holding a shard":
                    since[entry["shard"]] = stamp
                elif entry["message"].startswith("shard given up") and entry["shard"] in since:
                    start = since.pop(entry["shard"])
                    intervals.setdefault(entry["shard"], []).append(
                        (start, stamp, replica.identity)
                    )
            end = self.killed.get(replica.identity, now)
            for shard, start in since.items():
                intervals.setdefault(shard, []).append((start, end, replica.identity))
        return intervals


@asynccontextmanager
async def fleet(kube: Kube, namespace: str, directory: Path) -> AsyncIterator[Fleet]:
    running = Fleet(kube, namespace, directory)
    try:
        yield running
    finally:
        await kill_all(r.process for r in running.replicas)


_until = partial(until, every=0.05)


def _name(i: int) -> str:
    return f"app-{i:03d}"


def _manifests(namespace: str) -> dict[str, str]:
    return {
        f"apps/{_name(i)}/settings.yaml": yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": _name(i), "namespace": namespace},
                "data": {"greeting": "hello"},
            }
        )
        for i in range(SYNCS)
    }


async def _ready_syncs(custom: client.CustomObjectsApi, namespace: str) -> int:
    found = await custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "syncs")
    count = 0
    for item in found["items"]:
        status = item.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        if (conditions.get("Ready") or {}).get("status") == "True":
            count += 1
    return count


async def _greetings(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    found = await core.list_namespaced_config_map(namespace)
    return {cm.metadata.name: (cm.data or {}).get("greeting", "") for cm in found.items}


async def _wait_async(check: Callable[[], Any], *, seconds: float, what: str) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > seconds:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await anyio.sleep(0.1)
    return time.monotonic() - started


async def test_three_replicas_split_300_syncs_and_survivors_take_a_killed_replicas_shard(
    crds: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
) -> None:
    kube = crds
    core = client.CoreV1Api(kube.api)
    custom = client.CustomObjectsApi(kube.api)
    repo = upstream("fleet")
    repo.commit(_manifests(namespace))
    url = f"{git_daemon}fleet.git"
    syncs = [
        sync(_name(i), namespace, url, source={"path": f"apps/{_name(i)}"}) for i in range(SYNCS)
    ]
    shard_of = {_name(i): place(namespace, _name(i), None, SHARDS).shard for i in range(SYNCS)}
    takeovers: list[float] = []
    heals: list[float] = []
    async with fleet(kube, namespace, tmp_path) as running:
        for identity in ("r0", "r1", "r2"):
            await running.start(identity)
        await _until(running.balanced, seconds=60, what="one shard per replica")

        await kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(syncs))

        async def all_ready() -> bool:
            return await _ready_syncs(custom, namespace) == SYNCS

        ready_after = await _wait_async(all_ready, seconds=600, what="every Sync Ready")
        spread = {
            r.identity: (r.status()["sharding"]["held"], len(r.status()["syncs"]))
            for r in running.live()
        }
        assert sum(count for _, count in spread.values()) == SYNCS, spread
        for held, count in spread.values():
            expected = sum(1 for s in shard_of.values() if s in held)
            assert count == expected, spread

        for kill in range(KILLS):
            victim = running.live()[kill % len(running.live())]
            lost_shards = victim.status()["sharding"]["held"]
            orphans = [name for name, shard in shard_of.items() if shard in lost_shards]
            await running.kill(victim)
            killed = time.monotonic()

            def taken_over(shards: list[int] = lost_shards) -> bool:
                held = running.held()
                return all(any(s in h for h in held.values()) for s in shards)

            async def watch_takeover(killed: float = killed) -> None:
                await _until(taken_over, seconds=LEASE_S + 10, what="the shard taken over")
                takeovers.append(time.monotonic() - killed)

            async def drift(name: str, limiter: anyio.CapacityLimiter) -> None:
                async with limiter:
                    await core.patch_namespaced_config_map(
                        name, namespace, {"data": {"greeting": "edited by hand"}}
                    )

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(watch_takeover)
                limiter = anyio.CapacityLimiter(8)
                async with anyio.create_task_group() as drifts:
                    for name in orphans:  # drift every object of the dead replica's shard
                        drifts.start_soon(drift, name, limiter)
                drifted = time.monotonic() - killed

            async def healed(names: list[str] = orphans) -> bool:
                greetings = await _greetings(core, namespace)
                return all(greetings.get(name) == "hello" for name in names)

            await _wait_async(healed, seconds=120, what="the dead replica's drifts healed")
            heals.append(time.monotonic() - killed)
            print(
                f"\nkill {kill + 1}: {victim.identity} (shards {lost_shards}, {len(orphans)} "
                f"syncs) drifted in {drifted:.2f} s; taken over after {takeovers[-1]:.2f} s, "
                f"all healed after {heals[-1]:.2f} s"
            )
            await running.start(f"r{SHARDS + kill}")
            await _until(running.balanced, seconds=60, what="the newcomer given a shard")

        intervals = running.holding_intervals()
        final = {r.identity: r.status()["sharding"]["held"] for r in running.live()}
    for shard, held in intervals.items():
        ordered = sorted(held)
        for (_, end, who), (start, _, then) in itertools.pairwise(ordered):
            # Logged to the millisecond by different processes of one machine.
            assert start >= end - 0.002, (shard, who, then, ordered)
    print(
        f"\n{SYNCS} Syncs on {SHARDS} shards, 3 replicas (lease {LEASE_S} s, renew {RENEW_S} s, "
        f"retry {RETRY_S} s): all Ready {ready_after:.1f} s after creation"
        f"\n  spread (shards held, syncs acted on) per replica: {spread}"
        f"\n  kill -9 -> shard held by a survivor: p50 {statistics.median(takeovers):.2f} s, "
        f"max {max(takeovers):.2f} s {[round(x, 2) for x in takeovers]}"
        f"\n  kill -9 -> every drift of its ~{SYNCS // SHARDS} Syncs healed: p50 "
        f"{statistics.median(heals):.2f} s, max {max(heals):.2f} s {[round(x, 2) for x in heals]}"
        f"\n  final holders {final}"
    )
    assert min(takeovers) >= LEASE_S - RETRY_S * 1.2 - 0.5, takeovers
    assert max(takeovers) < LEASE_S + RETRY_S * 1.2 + 2.0, takeovers
