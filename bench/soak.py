"""Pushes, drift, webhook bursts and real faults, mixed for N minutes, with the invariants checked
all along.

    python -m bench.soak [--minutes 10] [--objects 60] [--seed S] [--keep DIR] [--settle 31]
                         [--fd-bound 10] [--rss-bound-mib 32]

Everything is real and on loopback: etcd and kube-apiserver (``aioreconcile.testing``, with
``--watch-cache=false`` so that every watch is served by etcd and a compaction is answered 410
Gone), a ``git daemon``, and ``aioreconcile run`` as a child process (one sync of ``--objects``
ConfigMaps, selfHeal, interval 1h, a GitHub receiver), so that it can be killed with SIGKILL and
its memory and descriptors read from ``/proc``. The controller reaches the apiserver and the git
daemon through a ``FaultProxy`` each (``aioreconcile/testing/faults.py``); this process talks
to the apiserver directly.

The run is a loop of cycles, until the time is up:

1. traffic (3-6 s): commits pushed to ``main`` every 1.5-4 s, each announced by a signed GitHub
   delivery (one in four sent twice with the same delivery id), changing the value of 1-8
   objects, sometimes removing one (its name is never used again) or adding one; another field
   manager editing a declared value of a live object every 0.3-1.5 s (every object in turn, so
   the fight guard, 5 heals of one object a minute, never engages);
2. a fault, drawn from a shuffled round of every kind (``FAULTS``), while the traffic goes on;
   ``controller-kill9`` only in the first half of the run, so the second half is one process
   whose memory and descriptors can be compared from start to end;
3. the traffic held, the wait for convergence: ``/status`` shows the last pushed commit applied
   and the cluster holds exactly Git's objects with Git's values (every drift healed); the time
   from the end of the fault (for a blackhole, from the blackhole: it ends only when the
   controller notices) is the fault's convergence time;
4. a quiet sample of the controller's RSS and open descriptors;
5. webhook probes: a commit is pushed and *not* announced, and forged deliveries name it (a
   wrong secret, no signature, a signature of another body, the legacy SHA-1 header only);
   after 2 s nothing may have moved (the status's applied revision, no object with the new
   values). Then the valid delivery, sent twice (the second answered ``duplicate``), and after
   it is applied replays of an older valid delivery, with its own id and with a new one: after
   1.5 s the head must still be applied and no object may have gone back to an older value.

Checked continuously by this process's own watch of the managed ConfigMaps: no object Git
holds at that moment is deleted (a DELETE event, or an object missing or with a new uid after
a relist), and no object's value from Git ever goes back to an older commit's.

Reported (JSON, then a table): counts (pushes, drift edits and heals, faults by kind, webhook
deliveries by kind and answer), the worst convergence time after a fault and per kind, objects
lost, wrongful prunes, forged or replayed deliveries that changed anything, rollbacks, and the
controller's RSS and open descriptors: read from ``/proc`` every second and after each
convergence ("quiet"); start and end after ``--settle`` s without traffic (at the start of the
last process and at the end), so that idle pooled connections are closed in both; the slope
over the quiet samples. The exit status is 1 when an invariant was broken or the descriptors
(RSS) grew by more than ``--fd-bound`` (``--rss-bound-mib``) from start to end.
"""

import argparse
import hashlib
import hmac
import os
import platform
import random
import secrets
import shlex
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import anyio
import anyio.abc
import yaml

from aioreconcile.adapters.kube.transport import MERGE_PATCH, KubeTransport
from aioreconcile.adapters.kube.watching import BOOKMARK, stream_events
from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.model import JsonObject
from aioreconcile.testing.controller import ControllerProcess, controller_process, github_push
from aioreconcile.testing.controlplane import ControlPlane, free_port, start_control_plane
from aioreconcile.testing.faults import FaultProxy, compact_etcd, kubeconfig_via, start_proxy
from aioreconcile.testing.processes import ManagedProcess, git_daemon
from bench.drift import CONFIGMAPS, Repository, _wait_for_port
from bench.reporting import emit

SECRET_ENV: Final = "SOAK_WEBHOOK_SECRET"
SECRET: Final = "soak-webhook-secret-" + secrets.token_hex(8)
SYNC: Final = "soak"
SELECTOR: Final = f"aioreconcile.dev/sync={SYNC}"  # the inventory ConfigMap carries managed-by only
CONVERGE_LIMIT_S: Final = 150.0  # a blackholed request gives up after 60 s, a watch after 20 s
READ_TIMEOUT_S: Final = 20  # `run --watch-read-timeout`, its least
GIT_TIMEOUT: Final = "5s"  # the sync's source.timeout: a hung Git server costs this per try
FAULTS: Final = (
    "controller-kill9",
    "controller-sigstop",
    "apiserver-restart",
    "apiserver-kill9",
    "etcd-sigstop",
    "etcd-compaction",
    "apiserver-blackhole",
    "apiserver-reset",
    "apiserver-cut",
    "apiserver-latency",
    "git-hung",
    "git-kill9",
    "git-sigstop",
    "git-refused",
)


# --- what Git holds ------------------------------------------------------------------------------


@dataclass
class Model:
    """The objects of the last commit on ``main``.

    Values are ``p<n>``, n being the push that set them, so an older value is recognised. A
    removed name is never used again: a deletion of a name Git holds is then always wrong,
    whatever commit the controller is applying."""

    namespace: str
    values: dict[str, str] = field(default_factory=dict)
    next_name: int = 0
    pushes: int = 0  # commits after the first
    head: str = ""
    removed: int = 0
    added: int = 0

    def new_name(self) -> str:
        self.next_name += 1
        return f"cm-{self.next_name - 1:04d}"

    def files(self) -> dict[str, str]:
        docs = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": self.namespace},
                "data": {"v": value},
            }
            for name, value in sorted(self.values.items())
        ]
        return {"deploy/objects.yaml": yaml.safe_dump_all(docs)}

    def change(self, rng: random.Random, *, objects: int) -> None:
        """The next commit's content: 1-8 values, sometimes a name removed or added."""
        n = self.pushes + 1
        for name in rng.sample(sorted(self.values), min(len(self.values), rng.randint(1, 8))):
            self.values[name] = f"p{n}"
        if len(self.values) > objects * 3 // 4 and rng.random() < 0.3:
            del self.values[rng.choice(sorted(self.values))]
            self.removed += 1
        if len(self.values) < objects * 5 // 4 and rng.random() < 0.3:
            self.values[self.new_name()] = f"p{n}"
            self.added += 1


def generation(value: object) -> int | None:
    """n of a value ``p<n>`` from Git; None for anything else (a drift)."""
    if isinstance(value, str) and value.startswith("p") and value[1:].isdigit():
        return int(value[1:])
    return None


# --- the observer: deletions and rollbacks -------------------------------------------------------


@dataclass
class Observer:
    """This process's own list-then-watch of the managed ConfigMaps, straight to the apiserver."""

    model: Model
    live: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (uid, value)
    newest: dict[str, int] = field(default_factory=dict)  # name -> highest generation seen
    wrongful: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    relists: int = 0
    deletions: int = 0  # of names Git no longer held: prunes
    heals: int = 0  # a drift value replaced by Git's
    forbidden: set[str] = field(default_factory=set)  # values that must never appear
    forbidden_seen: list[dict[str, Any]] = field(default_factory=list)

    def _see(self, obj: JsonObject, *, when: str) -> None:
        metadata = obj.get("metadata") or {}
        name = str(metadata.get("name"))
        value = str((obj.get("data") or {}).get("v"))
        uid = str(metadata.get("uid"))
        known = self.live.get(name)
        if known is not None and known[0] != uid and name in self.model.values:
            self.wrongful.append({"name": name, "how": f"recreated (new uid, {when})"})
        if known is not None and generation(known[1]) is None and generation(value) is not None:
            self.heals += 1
        self.live[name] = (uid, value)
        if value in self.forbidden:
            self.forbidden_seen.append({"name": name, "value": value})
        seen = generation(value)
        if seen is not None:
            newest = self.newest.get(name, -1)
            if seen < newest:
                self.rollbacks.append({"name": name, "value": value, "after": f"p{newest}"})
            self.newest[name] = max(newest, seen)

    def _gone(self, name: str, *, when: str) -> None:
        self.live.pop(name, None)
        if name in self.model.values:
            self.wrongful.append({"name": name, "how": when})
        else:
            self.deletions += 1

    async def _relist(self, transport: KubeTransport) -> str:
        listing = await transport.request(
            "GET",
            CONFIGMAPS.collection_path(self.model.namespace),
            params={"labelSelector": SELECTOR},
        )
        items = listing.body.get("items") or []
        names = {str(item["metadata"]["name"]) for item in items}
        for name in list(self.live):
            if name not in names:
                self._gone(name, when="missing from a relist")
        for item in items:
            self._see(item, when="relist")
        self.relists += 1
        return str(listing.body["metadata"]["resourceVersion"])

    async def run(
        self,
        transport: KubeTransport,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        rv = await self._relist(transport)
        task_status.started()
        while True:
            try:
                events = stream_events(
                    transport,
                    CONFIGMAPS,
                    label_selector=SELECTOR,
                    resource_version=rv,
                    namespace=self.model.namespace,
                    read_timeout_s=READ_TIMEOUT_S,
                )
                async with aclosing(events):
                    async for event in events:
                        rv = str(event.object.get("metadata", {}).get("resourceVersion") or rv)
                        if event.type == BOOKMARK:
                            continue
                        if event.type == "DELETED":
                            name = str(event.object.get("metadata", {}).get("name"))
                            self._gone(name, when="DELETED event")
                        else:
                            self._see(event.object, when=event.type)
            except AioreconcileError:  # 410, a dropped connection, the apiserver away
                await anyio.sleep(0.2)
                with suppress(AioreconcileError):
                    rv = await self._relist(transport)


# --- the controller's resources ------------------------------------------------------------------


def proc_sample(pid: int) -> tuple[float, int] | None:
    """(RSS MiB, open descriptors) of ``pid``, or None when it is gone."""
    try:
        rss = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_kinds(pid: int) -> dict[str, int]:
    """``pid``'s open descriptors by kind (socket, pipe, anon_inode:[eventpoll], a file...)."""
    kinds: Counter[str] = Counter()
    with suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                kinds[target.split(":", 1)[0] if target[:1] != "/" else "file"] += 1
    return dict(sorted(kinds.items()))


def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return float("nan")
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Soak:
    args: argparse.Namespace
    rng: random.Random
    plane: ControlPlane
    repo: Repository
    model: Model
    observer: Observer
    transport: KubeTransport
    session: aiohttp.ClientSession
    controller: ControllerProcess
    api_proxy: FaultProxy
    git_proxy: FaultProxy
    git: ManagedProcess
    git_port: int
    repository_url: str
    began: float = field(default_factory=time.monotonic)
    cycles_began: float = 0.0  # now() when the first cycle began (after the first sample)
    # The faults draw from their own generator: the same seed, the same faults in the same
    # order, however the traffic's timing went.
    faults_rng: random.Random = field(default_factory=lambda: random.Random(0))
    traffic_on: bool = False
    deliveries: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)  # valid, sent
    webhooks: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    converge_s: dict[str, list[float]] = field(default_factory=dict)
    not_converged: list[dict[str, Any]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    forged_effects: list[dict[str, Any]] = field(default_factory=list)
    replay_effects: list[dict[str, Any]] = field(default_factory=list)
    drift_edits: int = 0
    drift_refused: int = 0
    incarnation: int = 0
    samples: list[tuple[float, int, float, int]] = field(default_factory=list)  # t, inc, rss, fds
    quiet: list[tuple[float, int, float, int]] = field(default_factory=list)
    settled: list[tuple[float, int, float, int]] = field(default_factory=list)
    settled_kinds: list[dict[str, int]] = field(default_factory=list)  # of each settled sample
    applied_heads: int = 0
    _drift_round: list[str] = field(default_factory=list)

    # -- elapsed time

    def now(self) -> float:
        return time.monotonic() - self.began

    def second_half(self) -> bool:
        half_s: float = self.args.minutes * 30
        return self.now() - self.cycles_began > half_s

    # -- webhooks

    def delivery(self, sha: str, before: str) -> tuple[bytes, dict[str, str]]:
        return github_push(SECRET, clone_url=self.repository_url, sha=sha, before=before)

    async def send(self, kind: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """POST a delivery; count it as ``kind`` and its answer; (HTTP status, answer status)."""
        try:
            with anyio.fail_after(10):
                async with self.session.post(
                    f"{self.controller.hooks}github", data=body, headers=headers
                ) as response:
                    answer = await response.json(content_type=None)
                    code, status = response.status, str((answer or {}).get("status"))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            code, status = 0, type(e).__name__
        self.webhooks[f"{kind} {code} {status}"] += 1
        return code, status

    async def announce(self, sha: str, before: str, *, twice: bool) -> None:
        body, headers = self.delivery(sha, before)
        self.deliveries.append((body, headers))
        await self.send("valid", body, headers)
        if twice:
            await self.send("valid-again", body, headers)

    # -- Git

    async def push(self, *, announce: bool) -> str:
        before = self.model.head
        self.model.change(self.rng, objects=self.args.objects)
        # The model is updated before the commit exists, so a deletion seen from now on is
        # judged against what Git is about to hold.
        self.model.pushes += 1
        files = self.model.files()
        sha = await anyio.to_thread.run_sync(
            lambda: self.repo.commit(files, f"push {self.model.pushes}")
        )
        self.model.head = sha
        if announce:
            await self.announce(sha, before, twice=self.rng.random() < 0.25)
        return sha

    # -- the controller

    async def status(self) -> dict[str, Any]:
        try:
            with anyio.fail_after(5):
                async with self.session.get(f"{self.controller.ops}/status") as response:
                    document: dict[str, Any] = await response.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return {}
        return next((s for s in document.get("syncs", []) if s["name"] == SYNC), {})

    async def cluster(self) -> dict[str, str] | None:
        """name -> value of the managed ConfigMaps, straight from the apiserver."""
        try:
            listing = await self.transport.request(
                "GET",
                CONFIGMAPS.collection_path(self.model.namespace),
                params={"labelSelector": SELECTOR},
                time_limit=5,
            )
        except AioreconcileError:
            return None
        return {
            str(item["metadata"]["name"]): str((item.get("data") or {}).get("v"))
            for item in listing.body.get("items") or []
        }

    async def converged(self) -> bool:
        state = await self.status()
        if state.get("lastAppliedRevision") != self.model.head:
            return False
        return await self.cluster() == self.model.values

    async def converge(self, what: str, since: float) -> float | None:
        """Wait until converged; seconds from ``since`` (monotonic), None if it never did."""
        deadline = time.monotonic() + CONVERGE_LIMIT_S
        while time.monotonic() < deadline:
            if await self.converged():
                self.applied_heads += 1
                return time.monotonic() - since
            await anyio.sleep(0.1)
        state = await self.status()
        live = await self.cluster() or {}
        missing = sorted(set(self.model.values) - set(live))
        self.lost += [f"{what}: {name}" for name in missing]
        self.not_converged.append(
            {
                "after": what,
                "head": self.model.head,
                "applied": state.get("lastAppliedRevision"),
                "reason": state.get("reason"),
                "message": str(state.get("message", ""))[:300],
                "missing": missing,
                "extra": sorted(set(live) - set(self.model.values)),
                "unhealed": sorted(
                    n
                    for n, v in live.items()
                    if n in self.model.values and v != self.model.values[n]
                ),
            }
        )
        return None

    async def settle_sample(self) -> None:
        """A sample after ``--settle`` s of no traffic: aiohttp has closed its idle pooled
        connections (idle over 15 s, closed by a cleanup every 15 s), so the descriptors of two
        such samples compare like for like."""
        await anyio.sleep(self.args.settle)
        self.sample(quiet=True, settled=True)

    def sample(self, *, quiet: bool = False, settled: bool = False) -> None:
        pid = self.controller.process.pid
        if pid is None or not self.controller.process.running():
            return
        found = proc_sample(pid)
        if found is None:
            return
        point = (self.now(), self.incarnation, found[0], found[1])
        self.samples.append(point)
        if quiet:
            self.quiet.append(point)
        if settled:
            self.settled.append(point)
            self.settled_kinds.append(fd_kinds(pid))

    async def sampler(self) -> None:
        while True:
            self.sample()
            await anyio.sleep(1)

    # -- traffic

    async def drift_once(self) -> None:
        if not self._drift_round:
            self._drift_round = sorted(self.observer.live)
            self.rng.shuffle(self._drift_round)
            if not self._drift_round:
                return
        name = self._drift_round.pop()
        if name not in self.model.values or name not in self.observer.live:
            return
        try:
            await self.transport.request(
                "PATCH",
                CONFIGMAPS.object_path(name, self.model.namespace),
                params={"fieldManager": "soak-intruder"},
                body={"data": {"v": f"drift-{self.drift_edits}"}},
                content_type=MERGE_PATCH,
                time_limit=10,
            )
            self.drift_edits += 1
        except AioreconcileError:  # the apiserver is away, or the object was just pruned
            self.drift_refused += 1

    async def traffic(self) -> None:
        async def pusher() -> None:
            while True:
                await anyio.sleep(self.rng.uniform(1.5, 4.0))
                if self.traffic_on:
                    await self.push(announce=True)

        async def drifter() -> None:
            while True:
                await anyio.sleep(self.rng.uniform(0.3, 1.5))
                if self.traffic_on:
                    await self.drift_once()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pusher)
            tasks.start_soon(drifter)

    # -- faults

    async def start_controller(self) -> None:
        self.controller.process.start()
        self.incarnation += 1

    async def fault(self, kind: str) -> float:
        """Inject ``kind`` (traffic runs meanwhile); return when it ended (monotonic)."""
        hold = self.faults_rng.uniform(3, 8)
        plane = self.plane
        if kind == "controller-kill9":
            self.controller.process.kill9()
            await anyio.sleep(self.faults_rng.uniform(0.5, 2))
            await self.start_controller()
        elif kind == "controller-sigstop":
            self.controller.process.pause()
            await anyio.sleep(hold)
            self.controller.process.resume()
        elif kind in ("apiserver-restart", "apiserver-kill9"):
            if kind == "apiserver-kill9":
                plane.apiserver.kill9()
            else:
                await plane.stop_apiserver()
            await anyio.sleep(self.faults_rng.uniform(1, 4))
            await plane.start_apiserver()
        elif kind == "etcd-sigstop":
            plane.etcd.pause()
            await anyio.sleep(self.faults_rng.uniform(5, 15))
            plane.etcd.resume()
        elif kind == "etcd-compaction":
            # Unlabelled writes no watch of the controller sees, so every watch's
            # resourceVersion falls behind; then the history is compacted and every
            # connection reset: each watch resumes from a compacted revision, 410 Gone.
            for _ in range(3):
                with suppress(AioreconcileError):
                    await self.transport.request(
                        "POST",
                        CONFIGMAPS.collection_path(self.model.namespace),
                        body={"metadata": {"generateName": "noise-"}},
                    )
            await compact_etcd(plane.etcd_url)
            self.api_proxy.reset()
            await anyio.sleep(hold)
        elif kind == "apiserver-blackhole":
            self.api_proxy.blackhole()  # ends when the controller notices: timed from now
            ended = time.monotonic()
            await anyio.sleep(hold)
            return ended
        elif kind == "apiserver-reset":
            self.api_proxy.reset()
            await anyio.sleep(hold)
        elif kind == "apiserver-cut":
            self.api_proxy.cut()
            await anyio.sleep(hold)
        elif kind == "apiserver-latency":
            self.api_proxy.latency_s = 0.2
            await anyio.sleep(hold)
            self.api_proxy.latency_s = 0.0
        elif kind in ("git-hung", "git-refused"):
            self.git_proxy.mode = "hang" if kind == "git-hung" else "reset"
            await anyio.sleep(hold)
            self.git_proxy.mode = "forward"
        elif kind == "git-kill9":
            self.git.kill9()
            await anyio.sleep(hold)
            self.git.start()
            await _wait_for_port(self.git_port, self.git)
        elif kind == "git-sigstop":
            self.git.pause()
            await anyio.sleep(hold)
            self.git.resume()
        else:
            raise ValueError(f"unknown fault {kind}")
        return time.monotonic()

    def next_faults(self) -> list[str]:
        kinds = list(FAULTS)
        if self.second_half():  # one controller process to the end
            kinds.remove("controller-kill9")
        self.faults_rng.shuffle(kinds)
        return kinds

    # -- webhook probes

    async def probe(self) -> None:
        applied = self.model.head
        before_values = dict(self.model.values)
        sha = await self.push(announce=False)
        # The values only this commit carries: no forged delivery may bring them.
        self.observer.forbidden = {f"p{self.model.pushes}"}
        body, headers = self.delivery(sha, applied)
        wrong = hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
        other_body = body.replace(b'"change"', b'"changed"', 1)
        stolen = hmac.new(SECRET.encode(), other_body, hashlib.sha256).hexdigest()
        legacy = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
        forged: list[tuple[str, dict[str, str]]] = [
            ("wrong-secret", {**headers, "X-Hub-Signature-256": f"sha256={wrong}"}),
            ("unsigned", {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}),
            ("other-body-signature", {**headers, "X-Hub-Signature-256": f"sha256={stolen}"}),
            (
                "sha1-only",
                {
                    **{k: v for k, v in headers.items() if k != "X-Hub-Signature-256"},
                    "X-Hub-Signature": f"sha1={legacy}",
                },
            ),
        ]
        for name, forged_headers in forged:
            forged_headers = {**forged_headers, "X-GitHub-Delivery": str(uuid.uuid4())}
            code, status = await self.send("forged", body, forged_headers)
            if code != 401:
                self.forged_effects.append({"forgery": name, "answer": f"{code} {status}"})
        await anyio.sleep(2)
        state = await self.status()
        live = await self.cluster()
        if state.get("lastAppliedRevision") != applied:
            self.forged_effects.append(
                {"applied": state.get("lastAppliedRevision"), "expected": applied}
            )
        if live is not None and live != before_values:
            changed = sorted(n for n in live if live[n] != before_values.get(n))
            self.forged_effects.append({"changed": changed[:10]})
        if self.observer.forbidden_seen:
            self.forged_effects += self.observer.forbidden_seen
            self.observer.forbidden_seen = []
        self.observer.forbidden = set()

        # The valid delivery, and the same delivery again.
        self.deliveries.append((body, headers))
        await self.send("valid", body, headers)
        await self.send("valid-again", body, headers)
        if await self.converge("the probe's valid delivery", time.monotonic()) is None:
            return
        # Replays of an older valid delivery: its own id, then a new one.
        old_body, old_headers = self.rng.choice(self.deliveries[:-1] or self.deliveries)
        await self.send("replay", old_body, old_headers)
        await self.send(
            "replay-new-id", old_body, {**old_headers, "X-GitHub-Delivery": str(uuid.uuid4())}
        )
        rollbacks = len(self.observer.rollbacks)
        await anyio.sleep(1.5)
        state = await self.status()
        if state.get("lastAppliedRevision") != sha or await self.cluster() != self.model.values:
            self.replay_effects.append(
                {"applied": state.get("lastAppliedRevision"), "expected": sha}
            )
        if len(self.observer.rollbacks) > rollbacks:
            self.replay_effects += self.observer.rollbacks[rollbacks:]

    # -- the loop

    async def run(self) -> None:
        self.cycles_began = self.now()
        deadline = self.cycles_began + self.args.minutes * 60
        queue: list[str] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.traffic)
            tasks.start_soon(self.sampler)
            while self.now() < deadline:
                self.traffic_on = True
                await anyio.sleep(self.rng.uniform(3, 6))
                if not queue:
                    queue = self.next_faults()
                kind = queue.pop()
                if kind == "controller-kill9" and self.second_half():
                    kind = queue.pop() if queue else "apiserver-reset"
                print(f"[{self.now():6.1f}s] fault {kind}", file=sys.stderr, flush=True)
                ended = await self.fault(kind)
                self.faults[kind] += 1
                self.traffic_on = False
                took = await self.converge(kind, ended)
                if took is not None:
                    self.converge_s.setdefault(kind, []).append(took)
                    print(f"[{self.now():6.1f}s]   converged in {took:.2f} s", file=sys.stderr)
                else:
                    print(f"[{self.now():6.1f}s]   NOT converged", file=sys.stderr)
                await anyio.sleep(1)  # the heals' last writes, then a quiet sample
                self.sample(quiet=True)
                if kind == "controller-kill9":  # a new process: its own starting point
                    await self.settle_sample()
                    deadline += self.args.settle  # not taken from the cycles' time
                if took is not None:  # a probe proves nothing on a cluster not converged
                    await self.probe()
            self.traffic_on = False
            await self.converge("the end", time.monotonic())
            await self.settle_sample()
            tasks.cancel_scope.cancel()

    # -- the report

    def report(self) -> dict[str, Any]:
        last = self.incarnation
        quiet = [q for q in self.quiet if q[1] == last]
        settled = [q for q in self.settled if q[1] == last]
        every = [s for s in self.samples if s[1] == last]
        worst = max((t for ts in self.converge_s.values() for t in ts), default=float("nan"))
        worst_kind = next((k for k, ts in self.converge_s.items() for t in ts if t == worst), None)
        webhooks = dict(sorted(self.webhooks.items()))
        return {
            "minutes": self.args.minutes,
            "objects": len(self.model.values),
            "pushes": self.model.pushes,
            "names_added": self.model.added,
            "names_removed": self.model.removed,
            "prunes_seen": self.observer.deletions,
            "heads_applied_at_checkpoints": self.applied_heads,
            "drift_edits": self.drift_edits,
            "drift_edits_refused": self.drift_refused,
            "heals_seen": self.observer.heals,
            "faults": sum(self.faults.values()),
            "faults_by_kind": dict(sorted(self.faults.items())),
            "webhooks": sum(webhooks.values()),
            "webhooks_by_outcome": webhooks,
            "worst_convergence_s": worst,
            "worst_convergence_after": worst_kind,
            "convergence_s_by_fault": {
                k: {"n": len(ts), "max": max(ts), "median": sorted(ts)[len(ts) // 2]}
                for k, ts in sorted(self.converge_s.items())
            },
            "not_converged": self.not_converged,
            "objects_lost": len(self.lost),
            "objects_lost_detail": self.lost,
            "wrongful_prunes": len(self.observer.wrongful),
            "wrongful_prunes_detail": self.observer.wrongful,
            "rollbacks": len(self.observer.rollbacks),
            "rollbacks_detail": self.observer.rollbacks,
            "forged_effects": len(self.forged_effects),
            "forged_effects_detail": self.forged_effects,
            "replay_effects": len(self.replay_effects),
            "replay_effects_detail": self.replay_effects,
            "observer_relists": self.observer.relists,
            "controller_processes": self.incarnation,
            "rss_mib": summary(
                [(t, r) for t, _, r, _ in settled],
                [(t, r) for t, _, r, _ in quiet],
                [r for _, _, r, _ in every],
            ),
            "fds": summary(
                [(t, f) for t, _, _, f in settled],
                [(t, f) for t, _, _, f in quiet],
                [f for _, _, _, f in every],
            ),
            "fd_kinds_settled": [
                {"t": round(t, 1), "process": n, **kinds}
                for (t, n, _, _), kinds in zip(self.settled, self.settled_kinds, strict=True)
            ],
            "quiet_samples": [
                {"t": round(t, 1), "rss_mib": round(r, 1), "fds": f} for t, _, r, f in quiet
            ],
        }


def summary(
    settled: Sequence[tuple[float, float]],
    quiet: Sequence[tuple[float, float]],
    every: Sequence[float],
) -> dict[str, Any]:
    """Of the last controller process: start and end (settled samples), the slope over every
    quiet sample (after each convergence), the max of those and of every sample (1 s apart)."""
    return {
        "start": settled[0][1] if settled else float("nan"),
        "end": settled[-1][1] if settled else float("nan"),
        "quiet_max": max((v for _, v in quiet), default=float("nan")),
        "max": max(every, default=float("nan")),
        "slope_per_min": slope_per_min(quiet),
        "window_s": settled[-1][0] - settled[0][0] if len(settled) > 1 else 0.0,
    }


def broken(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The invariants that failed, in words."""
    failed = []
    for key in ("objects_lost", "wrongful_prunes", "rollbacks", "forged_effects", "replay_effects"):
        if report[key]:
            failed.append(f"{key}: {report[key]}")
    if report["not_converged"]:
        failed.append(f"not converged after {len(report['not_converged'])} fault(s)")
    fds = report["fds"]
    if fds["end"] - fds["start"] > args.fd_bound:
        failed.append(f"open descriptors grew from {fds['start']} to {fds['end']}")
    rss = report["rss_mib"]
    if rss["end"] - rss["start"] > args.rss_bound_mib:
        failed.append(f"RSS grew from {rss['start']:.1f} to {rss['end']:.1f} MiB")
    return failed


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The table: one measure a line."""
    table: list[dict[str, Any]] = []

    def add(measure: str, value: Any, must: str = "") -> None:
        table.append({"measure": measure, "value": value, "must": must})

    add("pushes (commits)", report["pushes"])
    add("heads applied at checkpoints", report["heads_applied_at_checkpoints"], "all")
    add("drift edits (refused)", f"{report['drift_edits']} ({report['drift_edits_refused']})")
    add("heals seen", report["heals_seen"])
    add("prunes seen (names Git dropped)", report["prunes_seen"])
    for kind, n in report["faults_by_kind"].items():
        times = report["convergence_s_by_fault"].get(kind)
        add(f"fault {kind}", n, f"converged max {times['max']:.2f} s" if times else "")
    for outcome, n in report["webhooks_by_outcome"].items():
        add(f"webhook {outcome}", n)
    add(
        "worst convergence after a fault (s)",
        report["worst_convergence_s"],
        str(report["worst_convergence_after"]),
    )
    add("not converged", len(report["not_converged"]), "0")
    add("objects lost", report["objects_lost"], "0")
    add("wrongful prunes", report["wrongful_prunes"], "0")
    add("rollbacks to an older commit's value", report["rollbacks"], "0")
    add("forged deliveries that changed anything", report["forged_effects"], "0")
    add("replays that changed anything", report["replay_effects"], "0")
    rss, fds = report["rss_mib"], report["fds"]
    add(
        "RSS MiB start/end/max (quiet)",
        f"{rss['start']:.1f}/{rss['end']:.1f}/{rss['quiet_max']:.1f}",
        f"slope {rss['slope_per_min']:+.2f}/min over {rss['window_s']:.0f} s; max {rss['max']:.1f}",
    )
    add(
        "open fds start/end/max (quiet)",
        f"{fds['start']}/{fds['end']}/{fds['quiet_max']}",
        f"slope {fds['slope_per_min']:+.2f}/min; max {fds['max']}",
    )
    last = [k for k in report["fd_kinds_settled"] if k["process"] == report["controller_processes"]]
    if last:

        def kinds(sample: dict[str, Any]) -> str:
            return " ".join(f"{k} {v}" for k, v in sample.items() if k not in ("t", "process"))

        add("open fds by kind, start -> end", f"{kinds(last[0])} -> {kinds(last[-1])}")
    add("controller processes (kill -9 restarts + 1)", report["controller_processes"])
    return table


@asynccontextmanager
async def components(
    workdir: Path,
) -> AsyncIterator[tuple[ControlPlane, FaultProxy, FaultProxy, ManagedProcess, int, Path]]:
    async with start_control_plane(
        workdir / "plane", apiserver_args=("--watch-cache=false",)
    ) as plane:
        server = urlsplit(plane.server)
        assert server.hostname is not None
        assert server.port is not None
        served = workdir / "served"
        served.mkdir()
        git_port = free_port()
        git = git_daemon(served, port=git_port, log_path=workdir / "git-daemon.log")
        git.start()
        try:
            await _wait_for_port(git_port, git)
            async with (
                start_proxy(server.hostname, server.port) as api_proxy,
                start_proxy("127.0.0.1", git_port) as git_proxy,
            ):
                yield plane, api_proxy, git_proxy, git, git_port, served
        finally:
            git.resume()
            await git.stop(grace=5)


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(f"{args.seed}-traffic")
    namespace = f"soak-{secrets.token_hex(3)}"
    async with (
        components(workdir) as (plane, api_proxy, git_proxy, git, git_port, served),
        await KubeTransport.connect(plane.kubeconfig) as transport,
    ):
        await transport.request(
            "POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}}
        )
        model = Model(namespace)
        for _ in range(args.objects):
            model.values[model.new_name()] = "p0"
        repo = Repository.create(served, workdir, SYNC)
        model.head = repo.commit(model.files(), "initial")
        url = f"git://127.0.0.1:{git_proxy.port}/{SYNC}.git"
        config = {
            "syncs": [
                {
                    "name": SYNC,
                    "source": {
                        "url": url,
                        "ref": "main",
                        "path": "deploy",
                        "interval": "1h",
                        "timeout": GIT_TIMEOUT,
                    },
                    "targetNamespace": namespace,
                    "selfHeal": True,
                }
            ],
            "receivers": [
                {
                    "name": "github",
                    "provider": "github",
                    "secretEnv": SECRET_ENV,
                    "syncs": [SYNC],
                }
            ],
        }
        controller = controller_process(
            config,
            kubeconfig=kubeconfig_via(plane.kubeconfig, api_proxy.port, workdir),
            namespace=namespace,
            workdir=workdir,
            extra_args=("--watch-read-timeout", str(READ_TIMEOUT_S)),
            env={**os.environ, SECRET_ENV: SECRET},
        )
        observer = Observer(model)
        async with aiohttp.ClientSession() as session, anyio.create_task_group() as tasks:
            run = Soak(
                args,
                rng,
                plane,
                repo,
                model,
                observer,
                transport,
                session,
                controller,
                api_proxy,
                git_proxy,
                git,
                git_port,
                url,
                faults_rng=random.Random(args.seed),
            )
            await tasks.start(observer.run, transport)
            try:
                await run.start_controller()
                took = await run.converge("the first apply", time.monotonic())
                if took is None:
                    raise SystemExit(
                        f"the first apply did not converge:\n{controller.process.log_tail()}"
                    )
                run.began = time.monotonic()
                await run.settle_sample()
                await run.run()
            finally:
                tasks.cancel_scope.cancel()
                await controller.process.stop(grace=10)
        return run.report()


async def main(args: argparse.Namespace) -> int:
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    keep = Path(args.keep) if args.keep else None
    with tempfile.TemporaryDirectory(prefix="aioreconcile-soak-") as tmp:
        workdir = keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = await soak(args, workdir)
    failed = broken(report, args)
    emit(
        "soak",
        rows(report),
        extra={
            "command": shlex.join(["python", "-m", "bench.soak", *sys.argv[1:]]),
            "date": started.isoformat(timespec="seconds"),
            "cpu": _cpu_model(),
            "node": platform.node(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "seed": args.seed,
            "report": report,
            "invariants_broken": failed,
        },
    )
    for line in failed:
        print(f"INVARIANT BROKEN: {line}", file=sys.stderr)
    return 1 if failed else 0


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def parser() -> argparse.ArgumentParser:
    parsing = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parsing.add_argument("--minutes", type=float, default=10.0)
    parsing.add_argument("--objects", type=int, default=60, help="ConfigMaps in Git at the start")
    parsing.add_argument("--seed", type=int, default=None)
    parsing.add_argument("--keep", default=None, help="keep the logs and data in this directory")
    parsing.add_argument(
        "--settle",
        type=float,
        default=31.0,
        help="seconds without traffic before the first and last samples (aiohttp closes "
        "pooled connections idle over 15 s at a cleanup every 15 s: up to 30 s)",
    )
    parsing.add_argument(
        "--fd-bound", type=int, default=10, help="most growth of open descriptors (quiet samples)"
    )
    parsing.add_argument(
        "--rss-bound-mib", type=float, default=32.0, help="most growth of RSS (quiet samples)"
    )
    return parsing


if __name__ == "__main__":
    arguments = parser().parse_args()
    if arguments.seed is None:
        arguments.seed = random.SystemRandom().randrange(2**32)
    sys.exit(anyio.run(main, arguments))
