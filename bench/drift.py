"""How fast the controller takes back a foreign edit, and what it costs at rest.

    python -m bench.drift [--sizes 100,1000,10000] [--edits 200] [--idle 20] [--kubeconfig K]
                          [--realistic] [--no-trim] [--tracemalloc DIR]

For each N: a bare Git repository with N ConfigMaps (files of 100, in one Namespace per 2,500
objects, the Namespaces declared in the repository too) is served by ``git daemon`` on loopback,
and ``aioreconcile run`` is started as a child process (one sync, interval 1h, selfHeal, a GitHub
receiver) on that repository. Once ``GET /status`` shows the commit applied (``apply_s``: from
starting the process), the controller is left alone for ``--idle`` seconds and its resident
memory and CPU time are read from /proc.

Then this process opens its own watch on the managed ConfigMaps and, ``--edits`` times, PATCHes
(merge patch, field manager ``bench-intruder``) ``data.value`` of a random object (sampled
without replacement while N allows, so the controller's fight guard never trips), waiting 20-100
ms between edits. Latency is from the PATCH's response to the watch event that shows the value
from Git again (the controller's corrective write). An edit not healed within 5 s is counted as
``unhealed``.

``--realistic`` makes the repository realistic (bench/manifests.py: three objects in five
ConfigMaps of ~2.6 KiB, one a Deployment, one a Service; edits go to the ConfigMaps only).
``--no-trim`` runs the controller with ``AIORECONCILE_MALLOC_TRIM=off``, so its idle RSS is not
lowered by ``malloc_trim`` after each reconcile (runtime.release_memory). ``--tracemalloc DIR``
(a diagnostic, not for figures) runs the controller under tracemalloc (bench/memdump.py) and
writes where its live memory was allocated, after the idle window, to DIR/drift-<N>.txt.

Without --kubeconfig a real control plane is started (aioreconcile.testing); each size gets its
own Namespaces, repository and controller, and its ConfigMaps and Namespaces are deleted after.
"""

import argparse
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import anyio
import anyio.abc
import orjson
import yaml

from aioreconcile.adapters.kube.discovery import Resource
from aioreconcile.adapters.kube.transport import MERGE_PATCH, KubeTransport
from aioreconcile.adapters.kube.watching import BOOKMARK, stream_events
from aioreconcile.engine.errors import NotFoundError, TransientError
from aioreconcile.engine.model import JsonObject
from aioreconcile.engine.planning import as_stored, our_fields, stamp
from aioreconcile.reactor.controlling import _compact
from aioreconcile.testing.controller import controller_process
from aioreconcile.testing.processes import ManagedProcess
from aioreconcile.testing.processes import git_daemon as git_daemon_process
from bench import manifests
from bench.reporting import emit

SECRET_ENV: Final = "BENCH_WEBHOOK_SECRET"
SECRET: Final = "bench-webhook-secret-" + secrets.token_hex(8)
MANAGED_SELECTOR: Final = "app.kubernetes.io/managed-by=aioreconcile"
CONFIGMAPS: Final = Resource("", "v1", "ConfigMap", "configmaps", True)
PER_FILE: Final = 100
PER_NAMESPACE: Final = 2500
HEAL_DEADLINE_S: Final = 5.0
PAYLOAD: Final = "x" * 200
_TICKS: Final = os.sysconf("SC_CLK_TCK")


# --- /proc ---------------------------------------------------------------------------------------


def proc_status_mib(pid: int, key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest rank, as in bench.webhook."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the Git repository --------------------------------------------------------------------------


@dataclass
class Repository:
    """A bare repository under the served root and a clone to commit and push from."""

    name: str
    bare: Path
    work: Path
    home: Path

    def git(self, *args: str, cwd: Path | None = None) -> str:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Bench",
            "GIT_AUTHOR_EMAIL": "bench@example.com",
            "GIT_COMMITTER_NAME": "Bench",
            "GIT_COMMITTER_EMAIL": "bench@example.com",
            "LC_ALL": "C",
        }
        result = subprocess.run(
            ["git", "-c", "init.defaultBranch=main", *args],
            cwd=cwd or self.work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"git {' '.join(args)} failed: {result.stderr}")
        return result.stdout.strip()

    @classmethod
    def create(cls, served: Path, workdir: Path, name: str) -> "Repository":
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        repo = cls(name, served / f"{name}.git", workdir / "work" / name, home)
        repo.git("init", "--quiet", "--bare", str(repo.bare), cwd=workdir)
        repo.git("clone", "--quiet", str(repo.bare), str(repo.work), cwd=workdir)
        return repo

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        """Write ``files``, commit, push to the bare repository; return the new SHA."""
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.git("add", "--all")
        self.git("commit", "--quiet", "-m", message)
        self.git("push", "--quiet", "origin", "HEAD:main")
        return self.git("rev-parse", "HEAD")


@dataclass
class Objects:
    """N ConfigMaps ``cm-00000``... spread over Namespaces of at most 2,500, and their values."""

    n: int
    prefix: str
    values: list[str] = field(default_factory=list)
    realistic: bool = False  # bench/manifests.py's mix instead of small ConfigMaps

    def __post_init__(self) -> None:
        if not self.values:
            self.values = [f"git-{i}" for i in range(self.n)]

    @property
    def namespaces(self) -> list[str]:
        return [f"{self.prefix}-{k}" for k in range(-(-self.n // PER_NAMESPACE))]

    def ref(self, i: int) -> tuple[str, str]:
        return self.namespaces[i // PER_NAMESPACE], f"cm-{i:05d}"

    @property
    def editable(self) -> list[int]:
        """The ConfigMaps, whose ``data.value`` edits change."""
        if not self.realistic:
            return list(range(self.n))
        return [i for i in range(self.n) if manifests.kind_of(i) == "ConfigMap"]

    def body(self, i: int) -> dict[str, Any]:
        namespace, name = self.ref(i)
        if self.realistic:
            body = manifests.manifest(i, namespace)
            if body["kind"] == "ConfigMap":
                body["metadata"]["name"] = name
                body["data"]["value"] = self.values[i]
            return body
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"value": self.values[i], "payload": PAYLOAD},
        }

    def file_of(self, i: int) -> str:
        return f"deploy/configmaps-{i // PER_FILE * PER_FILE:05d}.yaml"

    def files(self, only: Sequence[int] | None = None) -> dict[str, str]:
        """The repository's files (all, or those holding the objects ``only``)."""
        starts = sorted({i // PER_FILE * PER_FILE for i in (only or range(self.n))})
        files = {
            self.file_of(start): yaml.safe_dump_all(
                [self.body(i) for i in range(start, min(start + PER_FILE, self.n))],
                sort_keys=False,
            )
            for start in starts
        }
        if only is None:
            files["deploy/namespaces.yaml"] = yaml.safe_dump_all(
                [
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                    for ns in self.namespaces
                ]
            )
        return files


# --- the controller and its Git server -----------------------------------------------------------


@dataclass
class Running:
    """A controller applying ``objects`` from ``repo`` (served at ``url``)."""

    objects: Objects
    repo: Repository
    url: str
    port: int  # webhooks
    ops_port: int  # /status
    pid: int
    sha: str
    apply_s: float
    process: ManagedProcess

    @property
    def base(self) -> str:
        """The webhook listener."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops(self) -> str:
        """The operational listener (/status)."""
        return f"http://127.0.0.1:{self.ops_port}"

    async def sync_state(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.ops}/status") as response:
            document: dict[str, Any] = await response.json()
        state: dict[str, Any] = document["syncs"][0]
        return state

    async def wait_applied(
        self, session: aiohttp.ClientSession, sha: str, *, limit_s: float, poll_s: float = 0.2
    ) -> float:
        """Poll /status until ``sha`` is the last applied revision; seconds waited."""
        started = time.perf_counter()
        while True:
            if not self.process.running():
                raise SystemExit(
                    f"the controller exited; last lines of {self.process.log_path}:\n"
                    f"{self.process.log_tail()}"
                )
            try:
                state = await self.sync_state(session)
            except (aiohttp.ClientError, OSError):
                state = {}
            if state.get("lastAppliedRevision") == sha:
                return time.perf_counter() - started
            if time.perf_counter() - started > limit_s:
                raise SystemExit(
                    f"{sha} not applied after {limit_s:.0f} s (status {state}); last lines of "
                    f"{self.process.log_path}:\n{self.process.log_tail()}"
                )
            await anyio.sleep(poll_s)


async def _wait_for_port(port: int, process: ManagedProcess, limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not process.running():
            raise SystemExit(f"{process.name} exited:\n{process.log_tail()}")
        try:
            stream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            await anyio.sleep(0.05)
            continue
        await stream.aclose()
        return
    raise SystemExit(f"{process.name}: nothing listens on {port} after {limit_s} s")


@asynccontextmanager
async def git_daemon(served: Path, workdir: Path) -> AsyncIterator[str]:
    """``git://127.0.0.1:<port>/`` serving every repository under ``served``."""
    port = free_port()
    daemon = git_daemon_process(served, port=port, log_path=workdir / "git-daemon.log")
    try:
        daemon.start()
        await _wait_for_port(port, daemon)
        yield f"git://127.0.0.1:{port}/"
    finally:
        await daemon.stop(grace=5)


@asynccontextmanager
async def running_controller(
    kubeconfig: Path,
    workdir: Path,
    objects: Objects,
    *,
    name: str,
    apply_timeout: float = 600,
    trim: bool = True,
    tracemalloc: Path | None = None,
) -> AsyncIterator[Running]:
    """Repository with ``objects``, served by git daemon, applied by ``aioreconcile run``."""
    served = workdir / "served"
    served.mkdir(parents=True, exist_ok=True)
    repo = Repository.create(served, workdir, name)
    sha = repo.commit(objects.files(), "initial")
    async with git_daemon(served, workdir) as daemon_url:
        url = f"{daemon_url}{name}.git"
        config = {
            "syncs": [
                {
                    "name": name,
                    "source": {"url": url, "ref": "main", "path": "deploy", "interval": "1h"},
                    "selfHeal": True,
                }
            ],
            "receivers": [
                {"name": "github", "provider": "github", "secretEnv": SECRET_ENV, "syncs": [name]}
            ],
        }
        # The child inherits it; kept out of argv, so neither ps nor the log shows it.
        os.environ[SECRET_ENV] = SECRET
        if tracemalloc is not None:
            os.environ["MEMDUMP_OUT"] = str(tracemalloc)  # inherited by the child
        if not trim:
            os.environ["AIORECONCILE_MALLOC_TRIM"] = "off"  # inherited by the child
        made = controller_process(
            config,
            kubeconfig=kubeconfig,
            namespace=objects.namespaces[0],
            workdir=workdir,
            module="bench.memdump" if tracemalloc is not None else "aioreconcile",
        )
        port, ops_port, process = made.port, made.ops_port, made.process
        try:
            started = time.perf_counter()
            process.start()  # setpriv execs: the pid is the Python interpreter's
            assert process.pid is not None
            running = Running(objects, repo, url, port, ops_port, process.pid, sha, 0.0, process)
            async with aiohttp.ClientSession() as session:
                await running.wait_applied(session, sha, limit_s=apply_timeout)
            running.apply_s = time.perf_counter() - started
            yield running
        finally:
            await process.stop(grace=30)


# --- our own watch -------------------------------------------------------------------------------


EventHandler = Callable[[str, JsonObject, float], None]


async def watch_configmaps(
    transport: KubeTransport,
    on_event: EventHandler,
    *,
    resource: Resource = CONFIGMAPS,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Watch the managed ConfigMaps (or ``resource``) from now on; ``on_event(type, object,
    perf_counter())``.

    Started (``task_status``) once the watch request is open, so nothing written afterwards is
    missed; reconnects from the last resourceVersion until cancelled."""
    listing = await transport.request(
        "GET",
        resource.collection_path(),
        params={"labelSelector": MANAGED_SELECTOR, "limit": "1"},
    )
    rv = str(listing.body["metadata"]["resourceVersion"])
    started = False
    while True:
        try:
            events = stream_events(
                transport, resource, label_selector=MANAGED_SELECTOR, resource_version=rv
            )
            if not started:
                # The request is sent lazily; the rv given makes later writes visible anyway.
                task_status.started()
                started = True
            async with aclosing(events):
                async for event in events:
                    now = time.perf_counter()
                    rv = str(event.object.get("metadata", {}).get("resourceVersion") or rv)
                    if event.type != BOOKMARK:
                        on_event(event.type, event.object, now)
        except TransientError:
            await anyio.sleep(0.1)


def key_of(obj: JsonObject) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace")), str(metadata.get("name"))


# --- drift ---------------------------------------------------------------------------------------


@dataclass
class Edit:
    index: int
    foreign_value: str
    git_value: str
    t0: float | None = None
    seen_foreign: bool = False
    t1: float | None = None
    healed: anyio.Event = field(default_factory=anyio.Event)


def edit_targets(candidates: Sequence[int], edits: int, rng: random.Random) -> list[int]:
    """Objects to edit: shuffled rounds through all candidates (no object twice until all were
    edited once), never the same object twice in a row."""
    n = len(candidates)
    targets: list[int] = []
    while len(targets) < edits:
        round_ = list(candidates)
        rng.shuffle(round_)
        if targets and n > 1 and round_[0] == targets[-1]:
            round_[0], round_[-1] = round_[-1], round_[0]
        targets += round_
    return targets[:edits]


async def measure_drift(
    running: Running, transport: KubeTransport, edits: int, rng: random.Random
) -> dict[str, Any]:
    objects = running.objects
    pending: dict[tuple[str, str], Edit] = {}

    def on_event(kind: str, obj: JsonObject, now: float) -> None:
        if kind != "MODIFIED":
            return
        edit = pending.get(key_of(obj))
        if edit is None or edit.t1 is not None:
            return
        value = (obj.get("data") or {}).get("value")
        if value == edit.foreign_value:
            edit.seen_foreign = True
        elif value == edit.git_value and edit.seen_foreign:
            edit.t1 = now
            edit.healed.set()

    done: list[Edit] = []
    async with anyio.create_task_group() as tasks:
        await tasks.start(watch_configmaps, transport, on_event)
        await anyio.sleep(0.5)  # let the watch request reach the server
        for n, index in enumerate(edit_targets(objects.editable, edits, rng)):
            namespace, name = objects.ref(index)
            previous = pending.get((namespace, name))
            if previous is not None and previous.t1 is None:
                with anyio.move_on_after(HEAL_DEADLINE_S):
                    await previous.healed.wait()  # never edit an object whose heal is due
            edit = Edit(index, f"intruder-{n}-{rng.getrandbits(32):08x}", objects.values[index])
            pending[(namespace, name)] = edit
            await transport.request(
                "PATCH",
                CONFIGMAPS.object_path(name, namespace),
                params={"fieldManager": "bench-intruder"},
                body={"data": {"value": edit.foreign_value}},
                content_type=MERGE_PATCH,
            )
            edit.t0 = time.perf_counter()
            done.append(edit)
            await anyio.sleep(rng.uniform(0.02, 0.1))
        with anyio.move_on_after(HEAL_DEADLINE_S + 1):
            for edit in done:
                await edit.healed.wait()
        tasks.cancel_scope.cancel()

    latencies = sorted(
        e.t1 - e.t0
        for e in done
        if e.t0 is not None and e.t1 is not None and e.t1 - e.t0 <= HEAL_DEADLINE_S
    )
    async with aiohttp.ClientSession() as session:
        state = await running.sync_state(session)
    return {
        "edits": len(done),
        "heal_p50_ms": 1000 * percentile(latencies, 0.50),
        "heal_p95_ms": 1000 * percentile(latencies, 0.95),
        "heal_p99_ms": 1000 * percentile(latencies, 0.99),
        "heal_max_ms": 1000 * latencies[-1] if latencies else float("nan"),
        "unhealed": len(done) - len(latencies),
        "controller_heals": state.get("driftHeals"),
    }


async def measure_idle(running: Running, settle: float, idle: float) -> dict[str, Any]:
    await anyio.sleep(settle)  # the watches' first LISTs, the last log lines
    before = cpu_seconds(running.pid)
    await anyio.sleep(idle)
    return {
        "idle_rss_mib": proc_status_mib(running.pid, "VmRSS"),
        "idle_cpu_pct": 100 * (cpu_seconds(running.pid) - before) / idle,
        "peak_rss_mib": proc_status_mib(running.pid, "VmHWM"),
    }


async def state_cost(running: Running, transport: KubeTransport, name: str) -> dict[str, Any]:
    """What the controller keeps per object (SyncState.desired and .stored), computed by the
    functions it uses (``stamp``, ``as_stored`` over ``our_fields``) from the manifests and the
    live objects: the mean size of each form as orjson bytes, and as the controller keeps it
    (``_compact``, deflated): the ``*_kept_*`` figures."""
    objects = running.objects
    traceparent = "00-" + "0" * 32 + "-" + "0" * 16 + "-01"  # a traceparent's length
    desired_forms = [
        stamp(objects.body(i), sync=name, revision=running.sha, traceparent=traceparent)
        for i in range(objects.n)
    ]
    desired = [len(orjson.dumps(form)) for form in desired_forms]
    desired_kept = [len(_compact(form)) for form in desired_forms]
    stored: list[int] = []
    stored_kept: list[int] = []
    for namespace in objects.namespaces:
        for collection in (
            CONFIGMAPS.collection_path(namespace),
            f"/api/v1/namespaces/{namespace}/services",
            f"/apis/apps/v1/namespaces/{namespace}/deployments",
        ):
            listed = await transport.request(
                "GET", collection, params={"labelSelector": MANAGED_SELECTOR}
            )
            for item in listed.body.get("items") or []:
                fields = our_fields(item)
                if fields is not None:
                    form = as_stored(item, fields)
                    stored.append(len(orjson.dumps(form)))
                    stored_kept.append(len(_compact(form)))
    return {
        "desired_bytes_per_object": sum(desired) / max(1, len(desired)),
        "stored_bytes_per_object": sum(stored) / max(1, len(stored)),
        "desired_kept_bytes_per_object": sum(desired_kept) / max(1, len(desired_kept)),
        "stored_kept_bytes_per_object": sum(stored_kept) / max(1, len(stored_kept)),
    }


def wait_for_file(path: Path, limit_s: float) -> None:
    """Blocking (a worker thread): until ``path`` exists, or fail after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written within {limit_s:g} s")
        time.sleep(0.2)


async def remove(transport: KubeTransport, namespaces: Sequence[str]) -> None:
    """Delete what a size created, so the next size's controller does not list it in its
    cluster-wide watch (a Namespace alone would stay Terminating without a controller-manager)."""
    with anyio.CancelScope(shield=True):
        for namespace in namespaces:
            with suppress(NotFoundError):
                # Services have no deletecollection: the Namespace's deletion takes them.
                await transport.request("DELETE", CONFIGMAPS.collection_path(namespace))
                await transport.request(
                    "DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments"
                )
                await transport.request("DELETE", f"/api/v1/namespaces/{namespace}")


async def measure(kubeconfig: Path, args: argparse.Namespace, workdir: Path) -> None:
    rng = random.Random(args.seed)
    run_id = secrets.token_hex(3)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        name = f"drift-{n}"
        objects = Objects(n, prefix=f"bench-drift-{run_id}-{n}", realistic=args.realistic)
        size_dir = workdir / name
        size_dir.mkdir()
        async with await KubeTransport.connect(kubeconfig) as transport:
            try:
                dump = Path(args.tracemalloc) / f"{name}.txt" if args.tracemalloc else None
                async with running_controller(
                    kubeconfig,
                    size_dir,
                    objects,
                    name=name,
                    trim=not args.no_trim,
                    tracemalloc=dump,
                ) as running:
                    idle = await measure_idle(running, args.settle, args.idle)
                    idle |= await state_cost(running, transport, name)
                    if dump is not None:
                        os.kill(running.pid, signal.SIGUSR1)
                        await anyio.to_thread.run_sync(wait_for_file, dump, 120.0)
                    drift = await measure_drift(running, transport, args.edits, rng)
            finally:
                await remove(transport, objects.namespaces)
        row = {"objects": n, "apply_s": running.apply_s, **drift, **idle}
        if args.keep_logs:
            shutil.copy(size_dir / "controller.log", Path(args.keep_logs) / f"{name}.log")
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    emit(
        "drift",
        rows,
        extra={
            "edit_pause_ms": [20, 100],
            "heal_deadline_s": HEAL_DEADLINE_S,
            "idle_window_s": args.idle,
            "realistic": args.realistic,
            "malloc_trim": not args.no_trim,
            "load_average": os.getloadavg(),
            "settle_s": args.settle,
            "targets": {
                "heal_p99_ms": {"1000": 100, "10000": 250},
                "idle_rss_mb_at_10000": 150,
                "idle_cpu_pct_at_10000": 1,
            },
        },
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-drift-") as tmp:
        if args.kubeconfig:
            await measure(args.kubeconfig, args, Path(tmp))
            return
        from aioreconcile.testing import start_control_plane

        async with start_control_plane() as plane:
            await measure(plane.kubeconfig, args, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--idle", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="wait before the idle window")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument("--keep-logs", default=None, help="copy each controller log here")
    parser.add_argument(
        "--realistic", action="store_true", help="ConfigMaps, Deployments, Services"
    )
    parser.add_argument("--no-trim", action="store_true", help="no malloc_trim in the controller")
    parser.add_argument(
        "--tracemalloc",
        default=None,
        help="diagnostic, not for figures: run the controller under tracemalloc (bench.memdump) "
        "and write where its memory is, after the idle window, to DIR/<size>.txt",
    )
    anyio.run(main, parser.parse_args())
