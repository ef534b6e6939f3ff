"""The scale a platform team runs: many syncs of realistic objects in one controller, a storm of
heals, a storm of pushes.

    python -m bench.scale [--syncs 100] [--objects 1000] [--changed 50] [--edits 200]
                          [--storm 1000] [--storm-rounds 3] [--push-rounds 10] [--push-storm 50]
                          [--idle 20] [--settle 10] [--transport daemon|http]
                          [--concurrency N] [--heal-concurrency N] [--etcd-quota-gib 8]
                          [--kubeconfig K] [--keep-logs DIR]

``--syncs`` repositories (``s000.git`` ...), each with ``--objects`` realistic objects
(bench/manifests.py: three in five ConfigMaps of ~2.6 KiB, a Deployment, a Service) in a
Namespace of its own, are served on loopback by ``git daemon`` (or smart HTTP), and one
``aioreconcile run`` child process (production logging: JSON at info) has one sync per
repository (interval 1h, selfHeal) and one GitHub receiver for all of them. Measured, in order:

1. **start-up**: from starting the process until ``/status`` shows every sync's commit applied
   (polled every 0.5 s; also when the first and half of the syncs were), and the peak RSS;
2. **idle**: ``--settle`` seconds later, RSS and CPU over ``--idle`` seconds (/proc);
3. **heal**: ``--edits`` sequential merge-PATCHes (field manager ``bench-intruder``) of
   ``data.value`` of a ConfigMap drawn from all syncs without replacement, 20-100 ms apart;
   latency from the PATCH's response to this process's watch event showing Git's value again;
4. **push, others idle**: ``--push-rounds`` times, a commit changing ``data.value`` of
   ``--changed`` ConfigMaps of one sync (a different sync each round) is pushed (not timed),
   then a signed webhook is sent (t0) and t1 is when this process's watch has seen them all;
5. **heal storm**: ``--storm-rounds`` times, one foreign write over ``--storm`` objects of one
   sync: the label ``app.kubernetes.io/part-of`` (declared in Git) set to another value on every
   one of them, PATCHes 32 at a time as fast as the apiserver takes them (what ``kubectl label
   --overwrite`` over a namespace does, only faster). ``storm_healed_s`` runs from the first
   PATCH to the last object seen with Git's label again (``healed_after_writes_s`` from the last
   PATCH's response). As soon as the last PATCH is answered (most heals still due) another sync
   is pushed as in 4: its latency, and its queue wait from the controller's ``reconciled`` line,
   say whether heals starve pushes. Per storm also the CPU seconds the controller (and the
   apiserver and etcd, when started here) used from its first PATCH until it was healed and the
   push applied, and the requests for the three kinds the apiserver counted meanwhile by verb
   (``apiserver_request_total``: the storm's PATCHes, the heals' GETs and APPLYs, the push's);
6. **push storm**: ``--push-storm`` syncs each get a commit as in 4, then their webhooks are
   sent evenly spread over one second; latency per sync, and from the first webhook to the
   last object applied.

Without ``--kubeconfig`` a control plane is started (``aioreconcile.testing``) with etcd's
``--quota-backend-bytes`` raised to ``--etcd-quota-gib`` (100,000 realistic objects and their
history outgrow the default 2 GiB) and torn down after; with it, the syncs' Namespaces are
emptied and deleted after. Prints one JSON document (command, machine, date, load average,
every round) and then a table of the figures.
"""

import argparse
import datetime
import hashlib
import hmac
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import aiohttp
import anyio
import anyio.abc
import orjson
import yaml

from aioreconcile.adapters.kube.discovery import Resource
from aioreconcile.adapters.kube.transport import MERGE_PATCH, KubeTransport
from aioreconcile.engine.model import JsonObject
from aioreconcile.testing.controller import controller_process
from aioreconcile.testing.processes import ManagedProcess
from bench import manifests
from bench.drift import (
    CONFIGMAPS,
    PER_FILE,
    SECRET,
    SECRET_ENV,
    Objects,
    Repository,
    cpu_seconds,
    git_daemon,
    percentile,
    proc_status_mib,
    remove,
    watch_configmaps,
)
from bench.push import git_http
from bench.reporting import emit

DEPLOYMENTS: Final = Resource("apps", "v1", "Deployment", "deployments", True)
SERVICES: Final = Resource("", "v1", "Service", "services", True)
RESOURCES: Final = {"ConfigMap": CONFIGMAPS, "Deployment": DEPLOYMENTS, "Service": SERVICES}
STORM_LABEL: Final = "app.kubernetes.io/part-of"
GIT_LABEL: Final = "shop"  # bench/manifests.py's value of STORM_LABEL
STORM_PARALLEL: Final = 32
HEAL_DEADLINE_S: Final = 5.0
APPLIED_LIMIT_S: Final = 120.0
STORM_LIMIT_S: Final = 120.0


# --- the syncs, their repositories and objects ---------------------------------------------------


def object_name(objects: Objects, i: int) -> str:
    """Objects.body's name: ``cm-NNNNN`` for a ConfigMap, bench/manifests.py's otherwise."""
    return objects.ref(i)[1] if manifests.kind_of(i) == "ConfigMap" else manifests.name_of(i)


def files(objects: Objects, only: Sequence[int] | None = None) -> dict[str, str]:
    """``Objects.files`` through libyaml (PyYAML's pure-Python dumper takes minutes for
    100,000 realistic objects)."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    starts = sorted({i // PER_FILE * PER_FILE for i in (only or range(objects.n))})
    written = {
        objects.file_of(start): yaml.dump_all(
            [objects.body(i) for i in range(start, min(start + PER_FILE, objects.n))],
            Dumper=dumper,
            sort_keys=False,
        )
        for start in starts
    }
    if only is None:
        written["deploy/namespaces.yaml"] = yaml.dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                for ns in objects.namespaces
            ],
            Dumper=dumper,
        )
    return written


@dataclass
class Sync:
    name: str
    objects: Objects
    repo: Repository
    url: str = ""
    sha: str = ""  # the head the cluster should hold

    @property
    def namespace(self) -> str:
        return self.objects.namespaces[0]


# --- watching: this process's own view of the objects ---------------------------------------------

Waiter = Callable[[str, JsonObject, float], bool]  # (event type, object, now) -> done


class Watching:
    """One watch per kind of managed object; events for an object go to its waiter, if any."""

    def __init__(self) -> None:
        self.waiters: dict[tuple[str, str, str], Waiter] = {}

    def wait_for(self, kind: str, namespace: str, name: str, waiter: Waiter) -> None:
        self.waiters[(kind, namespace, name)] = waiter

    def handler(self, kind: str) -> Callable[[str, JsonObject, float], None]:
        def on_event(event_type: str, obj: JsonObject, now: float) -> None:
            metadata = obj.get("metadata") or {}
            key = (kind, str(metadata.get("namespace")), str(metadata.get("name")))
            waiter = self.waiters.get(key)
            if waiter is not None and waiter(event_type, obj, now):
                del self.waiters[key]

        return on_event


@dataclass
class Change:
    """Objects that must show a value; ``done`` once this process has seen them all."""

    pending: int
    first: float | None = None
    last: float | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    def seen(self, now: float) -> None:
        self.first = self.first if self.first is not None else now
        self.pending -= 1
        if self.pending == 0:
            self.last = now
            self.done.set()


def value_of(obj: JsonObject) -> object:
    return (obj.get("data") or {}).get("value")


def label_of(obj: JsonObject) -> object:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(STORM_LABEL)


def restored(
    change: Change,
    read: Callable[[JsonObject], object],
    foreign: object,
    git: object,
    times: dict[int, float],
    index: int,
) -> Waiter:
    """A waiter that, after an event showing ``foreign``, takes the first one showing ``git``
    for the heal (the controller's corrective write)."""
    saw_foreign = [False]

    def waiter(event_type: str, obj: JsonObject, now: float) -> bool:
        if event_type != "MODIFIED":
            return False
        value = read(obj)
        if value == foreign:
            saw_foreign[0] = True
        elif value == git and saw_foreign[0]:
            times[index] = now
            change.seen(now)
            return True
        return False

    return waiter


# --- the controller -------------------------------------------------------------------------------


@dataclass
class Controller:
    process: ManagedProcess
    port: int
    ops_port: int
    started: float

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def status(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        async with session.get(f"http://127.0.0.1:{self.ops_port}/status") as response:
            document: dict[str, Any] = await response.json()
        return {s["name"]: s for s in document["syncs"]}

    def alive(self) -> None:
        if not self.process.running():
            raise SystemExit(f"the controller exited:\n{self.process.log_tail()}")

    async def wait_recorded(
        self,
        session: aiohttp.ClientSession,
        expected: dict[str, str],
        *,
        limit_s: float,
        poll_s: float = 0.05,
    ) -> dict[str, float]:
        """Poll /status until each sync in ``expected`` applied its revision; perf_counter()
        at which each was first seen so."""
        seen: dict[str, float] = {}
        started = time.perf_counter()
        while len(seen) < len(expected):
            self.alive()
            try:
                states = await self.status(session)
            except (aiohttp.ClientError, OSError):
                states = {}
            now = time.perf_counter()
            for name, sha in expected.items():
                if name not in seen and states.get(name, {}).get("lastAppliedRevision") == sha:
                    seen[name] = now
            if now - started > limit_s:
                late = [
                    (n, states.get(n, {}).get("reason"), states.get(n, {}).get("lastError"))
                    for n in expected
                    if n not in seen
                ]
                raise SystemExit(
                    f"{len(late)} syncs not applied after {limit_s:.0f} s: {late[:5]}\n"
                    f"{self.process.log_tail()}"
                )
            await anyio.sleep(poll_s)
        return seen

    def reconciled(self) -> dict[tuple[str, str], dict[str, Any]]:
        """``(sync, revision) -> the "reconciled" log line`` of the controller so far."""
        lines: dict[tuple[str, str], dict[str, Any]] = {}
        with self.process.log_path.open("rb") as log:
            for raw in log:
                if b'"reconciled"' not in raw or not raw.startswith(b"{"):
                    continue
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if line.get("message") == "reconciled" and line.get("revision"):
                    lines[(line["sync"], line["revision"])] = line
        return lines


@asynccontextmanager
async def serving(served: Path, workdir: Path, transport: str) -> AsyncIterator[str]:
    server = git_daemon if transport == "daemon" else git_http
    async with server(served, workdir) as base:
        yield base


def start_controller(
    kubeconfig: Path, workdir: Path, syncs: Sequence[Sync], args: argparse.Namespace
) -> Controller:
    names = [s.name for s in syncs]
    config = {
        "syncs": [
            {
                "name": s.name,
                "source": {"url": s.url, "ref": "main", "path": "deploy", "interval": "1h"},
                "selfHeal": True,
            }
            for s in syncs
        ],
        "receivers": [
            {"name": "github", "provider": "github", "secretEnv": SECRET_ENV, "syncs": names}
        ],
    }
    os.environ[SECRET_ENV] = SECRET  # inherited by the child, never on its argv
    extra = ["--log-level", "info"]
    if args.concurrency is not None:
        extra += ["--concurrency", str(args.concurrency)]
    if args.heal_concurrency is not None:
        extra += ["--heal-concurrency", str(args.heal_concurrency)]
    made = controller_process(
        config,
        kubeconfig=kubeconfig,
        namespace="default",
        workdir=workdir,
        cache_dir=workdir / "git-cache",
        extra_args=extra,
    )
    process, port, ops_port = made.process, made.port, made.ops_port
    started = time.perf_counter()
    process.start()  # setpriv execs: the pid is the Python interpreter's
    return Controller(process, port, ops_port, started)


# --- pushes ---------------------------------------------------------------------------------------


def webhook(sync: Sync, before: str, after: str) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "created": False,
            "deleted": False,
            "forced": False,
            "repository": {"name": sync.name, "clone_url": sync.url, "html_url": sync.url},
            "head_commit": {"id": after, "message": "bench: change"},
            "commits": [{"id": after, "message": "bench: change"}],
        }
    )
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={signature}",
        "Content-Type": "application/json",
    }
    return body, headers


@dataclass
class Push:
    sync: Sync
    before: str
    sha: str
    change: Change
    sent: float = 0.0


def prepare_push(
    sync: Sync, watching: Watching, changed: int, rng: random.Random, tag: str
) -> Push:
    """Commit a new ``data.value`` for ``changed`` ConfigMaps of ``sync`` and push it (not
    timed); arm the waiters that see them applied."""
    objects = sync.objects
    chosen = sorted(rng.sample(objects.editable, changed))
    for i in chosen:
        objects.values[i] = f"{tag}-{i}"
    before = sync.sha
    sha = sync.repo.commit(files(objects, only=chosen), tag)
    change = Change(len(chosen))
    for i in chosen:
        expected = objects.values[i]

        def waiter(event_type: str, obj: JsonObject, now: float, expected: str = expected) -> bool:
            if event_type == "MODIFIED" and value_of(obj) == expected:
                change.seen(now)
                return True
            return False

        watching.wait_for("ConfigMap", sync.namespace, object_name(objects, i), waiter)
    sync.sha = sha
    return Push(sync, before, sha, change)


async def send_push(session: aiohttp.ClientSession, controller: Controller, push: Push) -> None:
    body, headers = webhook(push.sync, push.before, push.sha)
    push.sent = time.perf_counter()
    async with session.post(
        f"http://127.0.0.1:{controller.port}/hooks/github", data=body, headers=headers
    ) as response:
        await response.read()
        if response.status != 202:
            raise SystemExit(f"webhook for {push.sync.name} answered {response.status}")


async def wait_applied(push: Push) -> dict[str, Any]:
    with anyio.move_on_after(APPLIED_LIMIT_S):
        await push.change.done.wait()
    missing = push.change.pending
    last = push.change.last
    return {
        "sync": push.sync.name,
        "sha": push.sha,
        "applied_ms": 1000 * (last - push.sent) if last is not None and not missing else None,
        "first_ms": 1000 * (push.change.first - push.sent) if push.change.first else None,
        "missing": missing,
    }


def add_stages(controller: Controller, results: list[dict[str, Any]]) -> None:
    lines = controller.reconciled()
    for result in results:
        line = lines.get((result["sync"], result["sha"]), {})
        stages = line.get("stages_ms", {})
        result["queue_wait_ms"] = stages.get("queue wait")
        result["apply_ms"] = stages.get("apply")
        result["ref_fetch_ms"] = stages.get("ref fetch")


async def push_round(
    session: aiohttp.ClientSession,
    controller: Controller,
    watching: Watching,
    sync: Sync,
    changed: int,
    rng: random.Random,
    tag: str,
) -> dict[str, Any]:
    push = prepare_push(sync, watching, changed, rng, tag)
    await send_push(session, controller, push)
    result = await wait_applied(push)
    await controller.wait_recorded(session, {sync.name: push.sha}, limit_s=APPLIED_LIMIT_S)
    return result


# --- heals ----------------------------------------------------------------------------------------


async def measure_heals(
    transport: KubeTransport,
    watching: Watching,
    syncs: Sequence[Sync],
    edits: int,
    rng: random.Random,
) -> dict[str, Any]:
    """Sequential foreign edits outside any storm (as bench.drift, over every sync)."""
    candidates = [(s, i) for s in syncs for i in s.objects.editable]
    targets = rng.sample(candidates, min(edits, len(candidates)))
    edited: list[tuple[Change, float]] = []
    for n, (sync, i) in enumerate(targets):
        name = object_name(sync.objects, i)
        foreign = f"intruder-{n}-{rng.getrandbits(32):08x}"
        change = Change(1)
        waiter = restored(change, value_of, foreign, sync.objects.values[i], {}, 0)
        watching.wait_for("ConfigMap", sync.namespace, name, waiter)
        await transport.request(
            "PATCH",
            CONFIGMAPS.object_path(name, sync.namespace),
            params={"fieldManager": "bench-intruder"},
            body={"data": {"value": foreign}},
            content_type=MERGE_PATCH,
        )
        edited.append((change, time.perf_counter()))
        await anyio.sleep(rng.uniform(0.02, 0.1))
    latencies: list[float] = []
    for change, t0 in edited:
        with anyio.move_on_after(max(0.0, t0 + HEAL_DEADLINE_S - time.perf_counter())):
            await change.done.wait()
        if change.last is not None and change.last - t0 <= HEAL_DEADLINE_S:
            latencies.append(change.last - t0)
    latencies.sort()
    return {
        "edits": len(targets),
        "heal_p50_ms": 1000 * percentile(latencies, 0.50),
        "heal_p95_ms": 1000 * percentile(latencies, 0.95),
        "heal_p99_ms": 1000 * percentile(latencies, 0.99),
        "heal_max_ms": 1000 * latencies[-1] if latencies else float("nan"),
        "unhealed": len(targets) - len(latencies),
    }


async def storm(
    transport: KubeTransport,
    watching: Watching,
    sync: Sync,
    size: int,
    label: str,
    *,
    written_event: anyio.Event,
) -> dict[str, Any]:
    """One foreign write over ``size`` objects of ``sync``: their declared label changed.
    ``written_event`` is set once every PATCH was answered (the heals are then under way)."""
    objects = sync.objects
    indices = list(range(min(size, objects.n)))
    change = Change(len(indices))
    healed_at: dict[int, float] = {}
    patched_at: dict[int, float] = {}
    for i in indices:
        waiter = restored(change, label_of, label, GIT_LABEL, healed_at, i)
        watching.wait_for(manifests.kind_of(i), sync.namespace, object_name(objects, i), waiter)
    limiter = anyio.CapacityLimiter(STORM_PARALLEL)
    started = time.perf_counter()

    async def patch(i: int) -> None:
        resource = RESOURCES[manifests.kind_of(i)]
        async with limiter:
            await transport.request(
                "PATCH",
                resource.object_path(object_name(objects, i), sync.namespace),
                params={"fieldManager": "bench-intruder"},
                body={"metadata": {"labels": {STORM_LABEL: label}}},
                content_type=MERGE_PATCH,
            )
        patched_at[i] = time.perf_counter()

    async with anyio.create_task_group() as tasks:
        for i in indices:
            tasks.start_soon(patch, i)
    written = time.perf_counter()
    outstanding = change.pending
    written_event.set()
    with anyio.move_on_after(STORM_LIMIT_S):
        await change.done.wait()
    per_object = sorted(healed_at[i] - patched_at[i] for i in healed_at)
    return {
        "sync": sync.name,
        "objects": len(indices),
        "patches_s": written - started,
        "healed_s": (change.last - started) if change.last is not None else None,
        "healed_after_writes_s": (change.last - written) if change.last is not None else None,
        "heals_outstanding_at_writes_end": outstanding,
        "unhealed": change.pending,
        "object_p50_ms": 1000 * percentile(per_object, 0.50),
        "object_p99_ms": 1000 * percentile(per_object, 0.99),
    }


async def requests_by_verb(transport: KubeTransport) -> dict[str, float]:
    """The apiserver's own count of requests for the kinds the benchmark manages
    (``apiserver_request_total``, summed by verb; watches left out), as the server saw them."""
    async with transport.stream("/metrics") as content:
        text = (await content.read()).decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{") or 'verb="WATCH"' in line:
            continue
        if not any(f'resource="{r.plural}"' in line for r in RESOURCES.values()):
            continue
        verb = line.partition('verb="')[2].partition('"')[0]
        counts[verb] = counts.get(verb, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each process of ``pids`` (/proc)."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


async def storm_with_push(
    session: aiohttp.ClientSession,
    transport: KubeTransport,
    controller: Controller,
    watching: Watching,
    stormed: Sync,
    pushed: Sync,
    args: argparse.Namespace,
    rng: random.Random,
    tag: str,
    plane: dict[str, int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A storm over ``stormed`` and, as soon as its foreign writes are all answered (the
    controller's heals of them under way), a push of ``pushed``. Besides the times: the CPU the
    controller (and, when the benchmark started it, the apiserver and etcd) used from the storm's
    start until its push was applied and every object healed, and the requests the apiserver
    counted meanwhile by verb (the storm's PATCHes, the heals' requests, the push's)."""
    push = prepare_push(pushed, watching, args.changed, rng, tag)
    written = anyio.Event()
    storm_result: dict[str, Any] = {}
    requests_before = await requests_by_verb(transport)
    plane_before = cpu_of(plane)
    cpu_before = cpu_seconds(controller.pid)

    async def run_storm() -> None:
        storm_result.update(
            await storm(
                transport, watching, stormed, args.storm, f"storm-{tag}", written_event=written
            )
        )

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_storm)
        await written.wait()
        await send_push(session, controller, push)
        push_result = await wait_applied(push)
        push_result["storm_healing"] = not storm_result  # the storm was still being healed
    storm_result["controller_cpu_s"] = cpu_seconds(controller.pid) - cpu_before
    for name, used in cpu_of(plane).items():
        storm_result[f"{name}_cpu_s"] = used - plane_before[name]
    requests_after = await requests_by_verb(transport)
    storm_result["requests"] = {
        verb: n - requests_before.get(verb, 0.0)
        for verb, n in sorted(requests_after.items())
        if n != requests_before.get(verb, 0.0)
    }
    await controller.wait_recorded(session, {pushed.name: push.sha}, limit_s=APPLIED_LIMIT_S)
    return storm_result, push_result


async def push_storm(
    session: aiohttp.ClientSession,
    controller: Controller,
    watching: Watching,
    syncs: Sequence[Sync],
    args: argparse.Namespace,
    rng: random.Random,
) -> tuple[list[dict[str, Any]], float]:
    """Webhooks for ``syncs`` spread evenly over one second; seconds from the first webhook to
    the last object applied."""
    pushes = [prepare_push(s, watching, args.changed, rng, "push-storm") for s in syncs]
    gap = 1.0 / len(pushes)
    started = time.perf_counter()

    async def send(k: int, push: Push) -> None:
        await anyio.sleep(max(0.0, started + k * gap - time.perf_counter()))
        await send_push(session, controller, push)

    async with anyio.create_task_group() as tasks:
        for k, push in enumerate(pushes):
            tasks.start_soon(send, k, push)
    results = [await wait_applied(push) for push in pushes]
    lasts = [p.change.last for p in pushes if p.change.last is not None]
    total = max(lasts) - started if len(lasts) == len(pushes) else float("nan")
    await controller.wait_recorded(
        session, {p.sync.name: p.sha for p in pushes}, limit_s=APPLIED_LIMIT_S
    )
    return results, total


# --- the run --------------------------------------------------------------------------------------


def make_syncs(served: Path, workdir: Path, args: argparse.Namespace) -> list[Sync]:
    token = secrets.token_hex(3)
    syncs = []
    for k in range(args.syncs):
        name = f"s{k:03d}"
        objects = Objects(args.objects, prefix=f"scale-{token}-{name}", realistic=True)
        repo = Repository.create(served, workdir / name, name)
        sync = Sync(name, objects, repo)
        sync.sha = repo.commit(files(objects), "initial")
        syncs.append(sync)
    return syncs


def spread(values: Sequence[float | None]) -> dict[str, float]:
    present = sorted(v for v in values if v is not None)
    return {
        "p50": percentile(present, 0.50),
        "p95": percentile(present, 0.95),
        "min": present[0] if present else float("nan"),
        "max": present[-1] if present else float("nan"),
    }


async def measure(
    kubeconfig: Path, args: argparse.Namespace, workdir: Path, plane: dict[str, int] | None = None
) -> dict[str, Any]:
    """Every phase of the module docstring; the document ``emit`` prints. ``plane``: the pids
    of the apiserver and etcd when this process started them (their CPU per storm)."""
    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    served = workdir / "served"
    served.mkdir(parents=True)
    began = time.perf_counter()
    syncs = make_syncs(served, workdir, args)
    repositories_s = time.perf_counter() - began
    print(f"{len(syncs)} repositories in {repositories_s:.1f} s", file=sys.stderr, flush=True)
    watching = Watching()
    namespaces = [s.namespace for s in syncs]
    document: dict[str, Any] = {}
    async with (
        await KubeTransport.connect(kubeconfig) as transport,
        serving(served, workdir, args.transport) as base,
        aiohttp.ClientSession() as session,
    ):
        for sync in syncs:
            sync.url = f"{base}{sync.name}.git"
        try:
            controller = start_controller(kubeconfig, workdir, syncs, args)
            try:
                document = await phases(
                    session, transport, controller, watching, syncs, args, rng, plane or {}
                )
            finally:
                await controller.process.stop(grace=30)
                if args.keep_logs:
                    shutil.copy(
                        controller.process.log_path, Path(args.keep_logs) / "controller.log"
                    )
        finally:
            if args.kubeconfig:
                await remove(transport, namespaces)
    document["repositories_s"] = repositories_s
    document["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return document


async def phases(
    session: aiohttp.ClientSession,
    transport: KubeTransport,
    controller: Controller,
    watching: Watching,
    syncs: Sequence[Sync],
    args: argparse.Namespace,
    rng: random.Random,
    plane: dict[str, int],
) -> dict[str, Any]:
    seen = await controller.wait_recorded(
        session, {s.name: s.sha for s in syncs}, limit_s=args.apply_limit, poll_s=0.5
    )
    applied = sorted(t - controller.started for t in seen.values())
    startup = {
        "apply_s": applied[-1],
        "first_sync_s": applied[0],
        "half_syncs_s": percentile(applied, 0.5),
        "objects_per_s": len(syncs) * args.objects / applied[-1],
        "startup_peak_rss_mib": proc_status_mib(controller.pid, "VmHWM"),
    }
    print(f"start-up: {startup}", file=sys.stderr, flush=True)
    await anyio.sleep(args.settle)
    cpu_before = cpu_seconds(controller.pid)
    await anyio.sleep(args.idle)
    idle = {
        "idle_rss_mib": proc_status_mib(controller.pid, "VmRSS"),
        "idle_cpu_pct": 100 * (cpu_seconds(controller.pid) - cpu_before) / args.idle,
    }
    print(f"idle: {idle}", file=sys.stderr, flush=True)

    async with anyio.create_task_group() as watches:
        for kind, resource in RESOURCES.items():
            await watches.start(
                partial(watch_configmaps, resource=resource), transport, watching.handler(kind)
            )
        await anyio.sleep(0.5)  # let the watch requests reach the server

        heals = await measure_heals(transport, watching, syncs, args.edits, rng)
        print(f"heals: {heals}", file=sys.stderr, flush=True)

        idle_pushes = []
        for r in range(args.push_rounds):
            sync = syncs[(1 + r) % len(syncs)]
            idle_pushes.append(
                await push_round(
                    session, controller, watching, sync, args.changed, rng, f"push-{r}"
                )
            )
            await anyio.sleep(0.2)
        add_stages(controller, idle_pushes)
        print(f"pushes: {spread([p['applied_ms'] for p in idle_pushes])}", file=sys.stderr)

        storms, storm_pushes = [], []
        for r in range(args.storm_rounds):
            stormed = syncs[r % len(syncs)]
            pushed = syncs[(len(syncs) // 2 + r) % len(syncs)]
            if pushed is stormed:
                raise SystemExit("a heal storm needs at least two syncs")
            stormed_result, push_result = await storm_with_push(
                session, transport, controller, watching, stormed, pushed, args, rng, f"s{r}", plane
            )
            storms.append(stormed_result)
            storm_pushes.append(push_result)
            print(f"storm {r}: {stormed_result} push {push_result}", file=sys.stderr, flush=True)
            await anyio.sleep(1.0)
        add_stages(controller, storm_pushes)

        stormed_pushes, push_storm_s = await push_storm(
            session, controller, watching, syncs[: min(args.push_storm, len(syncs))], args, rng
        )
        add_stages(controller, stormed_pushes)
        print(f"push storm: {push_storm_s:.2f} s", file=sys.stderr, flush=True)
        watches.cancel_scope.cancel()

    final_rss = proc_status_mib(controller.pid, "VmRSS")
    pushes_idle = spread([p["applied_ms"] for p in idle_pushes])
    pushes_in_storm = spread([p["applied_ms"] for p in storm_pushes])
    storm_healed = spread([s["healed_s"] for s in storms])
    pushes_of_storm = spread([p["applied_ms"] for p in stormed_pushes])
    row = {
        "syncs": len(syncs),
        "objects": len(syncs) * args.objects,
        **startup,
        **idle,
        **heals,
        "push_p50_ms": pushes_idle["p50"],
        "push_max_ms": pushes_idle["max"],
        "storm_objects": storms[0]["objects"] if storms else 0,
        "storm_healed_p50_s": storm_healed["p50"],
        "storm_healed_max_s": storm_healed["max"],
        "storm_unhealed": sum(s["unhealed"] for s in storms),
        "storm_controller_cpu_p50_s": spread([s["controller_cpu_s"] for s in storms])["p50"],
        "storm_apiserver_cpu_p50_s": spread([s.get("apiserver_cpu_s") for s in storms])["p50"],
        "push_in_storm_p50_ms": pushes_in_storm["p50"],
        "push_in_storm_max_ms": pushes_in_storm["max"],
        "push_in_storm_queue_wait_max_ms": max(
            (p["queue_wait_ms"] or 0.0 for p in storm_pushes), default=float("nan")
        ),
        "push_storm_syncs": len(stormed_pushes),
        "push_storm_p50_ms": pushes_of_storm["p50"],
        "push_storm_max_ms": pushes_of_storm["max"],
        "push_storm_all_s": push_storm_s,
        "pushes_incomplete": sum(
            1 for p in [*idle_pushes, *storm_pushes, *stormed_pushes] if p["missing"]
        ),
        "final_rss_mib": final_rss,
    }
    return {
        "rows": [row],
        "pushes_idle": idle_pushes,
        "storms": storms,
        "pushes_in_storm": storm_pushes,
        "push_storm": stormed_pushes,
        "spread": {
            "push_idle_ms": pushes_idle,
            "push_in_storm_ms": pushes_in_storm,
            "storm_healed_s": storm_healed,
            "push_storm_ms": pushes_of_storm,
        },
    }


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": " ".join(["python -m bench.scale", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {
            "heal_p99_ms (100,000 objects, no storm)": 100,
            "storm_healed_s (1,000 objects)": 5,
            "idle_rss_mib (100,000 realistic objects)": 1024,
            "push_in_storm_p50_ms (50 objects)": 500,
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure on ``--kubeconfig``, or on a control plane of our own."""
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-scale-") as tmp:
        if args.kubeconfig:
            return await measure(args.kubeconfig, args, Path(tmp))
        from aioreconcile.testing import start_control_plane

        quota = int(args.etcd_quota_gib * 2**30)
        async with start_control_plane(etcd_args=[f"--quota-backend-bytes={quota}"]) as plane:
            pids = {"apiserver": plane.apiserver.pid, "etcd": plane.etcd.pid}
            return await measure(
                plane.kubeconfig,
                args,
                Path(tmp),
                {name: pid for name, pid in pids.items() if pid is not None},
            )


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    made.add_argument("--syncs", type=int, default=100)
    made.add_argument("--objects", type=int, default=1000, help="objects per sync")
    made.add_argument("--changed", type=int, default=50, help="ConfigMaps changed per push")
    made.add_argument("--edits", type=int, default=200, help="sequential foreign edits")
    made.add_argument("--storm", type=int, default=1000, help="objects one storm touches")
    made.add_argument("--storm-rounds", type=int, default=3)
    made.add_argument("--push-rounds", type=int, default=10)
    made.add_argument("--push-storm", type=int, default=50, help="syncs pushed within 1 s")
    made.add_argument("--idle", type=float, default=20.0, help="idle window, seconds")
    made.add_argument("--settle", type=float, default=10.0, help="wait before the idle window")
    made.add_argument("--apply-limit", type=float, default=3600.0, help="start-up limit, s")
    made.add_argument("--transport", choices=["daemon", "http"], default="daemon")
    made.add_argument("--concurrency", type=int, default=None, help="run --concurrency")
    made.add_argument("--heal-concurrency", type=int, default=None, help="run --heal-concurrency")
    made.add_argument("--etcd-quota-gib", type=float, default=8.0)
    made.add_argument("--seed", type=int, default=None)
    made.add_argument("--kubeconfig", type=Path, default=None)
    made.add_argument("--keep-logs", default=None, help="copy the controller's log here")
    return made


async def main(args: argparse.Namespace) -> None:
    if args.changed > min(len(Objects(args.objects, "x", realistic=True).editable), args.objects):
        raise SystemExit("--changed must not exceed the ConfigMaps of a sync")
    document = await run(args)
    rows = document.pop("rows")
    emit("scale", rows, extra={**settings(args), **document})


if __name__ == "__main__":
    arguments = parser().parse_args()
    if arguments.keep_logs:  # made first: a missing directory must not lose a run at its end
        Path(arguments.keep_logs).mkdir(parents=True, exist_ok=True)
    anyio.run(main, arguments)
