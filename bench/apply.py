"""How fast the engine applies, compared with two ceilings of a raw server-side-apply loop.

    python -m bench.apply [--sizes 1000] [--repeats 3] [--concurrency 16] [--kubeconfig K]
                          [--profile DIR]

Without --kubeconfig it starts its own real control plane (aioreconcile.testing). For each N and
repeat, realistic manifests (bench/manifests.py: ConfigMaps of ~2.6 KiB, Deployments, Services)
are applied on three paths, each by the engine (``runtime.apply_directory``, timed inside a fresh
child process, YAML parsing and client set-up included) and, right after, by two raw loops
(aiohttp + orjson + a semaphore with the same concurrency, no engine), each into its own
namespace:

- the wire ceiling (``raw_s``, ``engine_vs_raw``): bodies given parsed and pre-serialised, and
  told which objects changed; only the requests are timed;
- the file ceiling (``files_s``, ``engine_vs_files``): given the engine's input, a directory of
  the same YAML files, timed whole: read and parse them (PyYAML's C loader), LIST each kind and
  PATCH the objects not contained in live (``contained``; cold: every object).

The paths:

- cold: N objects created; the ceilings PATCH (server-side apply) all N;
- update: 10 % of the objects changed (ConfigMap values, Deployment images, Service ports); the
  ceilings LIST each kind once (what any applier must read to know what changed) and PATCH
  only the changed objects;
- no-op: the same directory again; the ceilings LIST and PATCH nothing.

It prints seconds and both ratios (ceiling seconds / engine seconds: 1.0 is the ceiling) per
path, per repeat, with the 1-minute load average before each repeat, and the median with
min-max. ``--profile DIR`` writes a cProfile of each engine apply there instead (slower: not
for figures; the render's worker thread is not in it).
"""

import argparse
import base64
import cProfile
import inspect
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import aiohttp
import anyio
import orjson
import yaml

from bench.manifests import every_tenth, manifests
from bench.reporting import emit

PATHS = {"ConfigMap": ("/api/v1", "configmaps"), "Service": ("/api/v1", "services")}
PATHS["Deployment"] = ("/apis/apps/v1", "deployments")


def objects(n: int, namespace: str) -> list[dict[str, Any]]:
    """N small objects (5% Deployments, 5% Services, ConfigMaps of ~350 bytes): what this bench
    applied before bench/manifests.py, and what bench.tracing still applies."""
    workloads = max(1, n // 20)
    result: list[dict[str, Any]] = []
    for i in range(workloads):
        labels = {"app": f"web-{i}"}
        result.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"web-{i}", "namespace": namespace},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "web",
                                    "image": "nginx:1.27",
                                    "ports": [{"containerPort": 80}],
                                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                                }
                            ]
                        },
                    },
                },
            }
        )
        result.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"web-{i}", "namespace": namespace},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 80}]},
            }
        )
    for i in range(n - len(result)):
        result.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"settings-{i}", "namespace": namespace},
                "data": {"index": str(i), "payload": "x" * 200},
            }
        )
    return result


def write_directory(directory: Path, docs: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yaml"):
        old.unlink()
    for start in range(0, len(docs), 100):
        (directory / f"objects-{start:05d}.yaml").write_text(
            yaml.safe_dump_all(docs[start : start + 100], sort_keys=False)
        )


def run_child(
    directory: Path, kubeconfig: Path, concurrency: int, profile: Path | None = None
) -> dict[str, Any]:
    """``python -m bench.apply --child``: one engine apply, timed inside, in its own process."""
    argv = [sys.executable, "-m", "bench.apply", "--child", str(directory)]
    argv += ["--kubeconfig", str(kubeconfig), "--concurrency", str(concurrency)]
    if profile is not None:
        argv += ["--profile", str(profile)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"engine apply failed (exit {os.waitstatus_to_exitcode(status)})")
    result: dict[str, Any] = orjson.loads(out)
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


STAGES: Final = ("revision", "connect", "discovery", "parse", "list", "decide", "settle")


def timing_stages() -> dict[str, float]:
    """Wrap the engine's steps so each adds its wall time to the returned dict (seconds).

    ``parse`` is ``read_directory`` (its worker thread), ``list`` the LISTs of every apply
    stage, ``decide`` the pure ``_prepare`` (stamp, refusal, decide) of every object; the rest
    of the apply stages' wall time is ``requests`` (PATCHes, dry-runs, waits for the limiter),
    computed by ``breakdown``. One wrapper call costs ~1 us: ~1 ms in 1,000 objects."""
    from aioreconcile import runtime
    from aioreconcile.adapters.kube import applying, cluster
    from aioreconcile.adapters.render import plain

    spent = dict.fromkeys((*STAGES, "apply"), 0.0)

    def wrap(owner: object, name: str, stage: str) -> None:
        function = getattr(owner, name)
        if inspect.iscoroutinefunction(function):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    spent[stage] += time.perf_counter() - started

            setattr(owner, name, timed_async)
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[stage] += time.perf_counter() - started

        setattr(owner, name, timed)

    wrap(runtime, "directory_revision", "revision")
    wrap(cluster.KubeCluster, "connect", "connect")
    wrap(cluster.KubeCluster, "refresh_discovery", "discovery")
    wrap(plain, "read_directory", "parse")
    wrap(applying.Applier, "_live_for", "list")
    wrap(applying, "_prepare", "decide")
    wrap(applying.Applier, "_apply_stage", "apply")
    wrap(applying.Applier, "_settle", "settle")
    return spent


def breakdown(seconds: float, spent: dict[str, float]) -> dict[str, float]:
    """Seconds per stage of one engine apply, ``requests`` and ``other`` derived."""
    stages = {stage: spent[stage] for stage in STAGES}
    stages["requests"] = max(0.0, spent["apply"] - spent["list"] - spent["decide"])
    stages["other"] = max(0.0, seconds - sum(stages.values()))
    return stages


async def child(directory: Path, kubeconfig: Path, concurrency: int) -> None:
    from aioreconcile import runtime

    spent = timing_stages()
    settings = runtime.DirectorySettings(
        path=directory,
        sync="bench",
        concurrency=concurrency,
        cluster=runtime.ClusterSettings(kubeconfig=kubeconfig),
    )
    started = time.perf_counter()
    outcome = await runtime.apply_directory(settings)
    seconds = time.perf_counter() - started
    if not outcome.ok:
        print(outcome.message, file=sys.stderr)
        for entry in outcome.changeset.failed[:5]:
            print(f"  {entry.ref}: {entry.error}", file=sys.stderr)
        raise SystemExit(1)
    totals = {a.value: n for a, n in outcome.changeset.totals().items() if n}
    stages = breakdown(seconds, spent)
    sys.stdout.write(
        orjson.dumps({"seconds": seconds, "totals": totals, "stages": stages}).decode()
    )


class RawClient:
    """The ceiling: aiohttp + orjson + a semaphore, straight from the kubeconfig."""

    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server = cluster["server"]
        files = {}
        for key in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
            path = workdir / key
            path.write_bytes(base64.b64decode(cluster.get(key) or user.get(key)))
            files[key] = str(path)
        self.ssl = ssl.create_default_context(cafile=files["certificate-authority-data"])
        self.ssl.load_cert_chain(files["client-certificate-data"], files["client-key-data"])

    @asynccontextmanager
    async def session(self, limit: int) -> AsyncIterator[aiohttp.ClientSession]:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=self.ssl)
        ) as session:
            yield session

    async def create_namespace(self, name: str) -> None:
        async with (
            self.session(1) as session,
            session.post(
                f"{self.server}/api/v1/namespaces",
                data=orjson.dumps({"metadata": {"name": name}}),
                headers={"Content-Type": "application/json"},
            ) as response,
        ):
            response.raise_for_status()

    def _url(self, doc: dict[str, Any]) -> str:
        prefix, plural = PATHS[doc["kind"]]
        meta = doc["metadata"]
        return f"{self.server}{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"

    async def _patch(
        self,
        session: aiohttp.ClientSession,
        limiter: anyio.CapacityLimiter,
        url: str,
        body: bytes,
    ) -> None:
        async with (
            limiter,
            session.patch(
                url,
                data=body,
                params={"fieldManager": "bench-raw", "force": "true"},
                headers={"Content-Type": "application/apply-patch+yaml"},
            ) as response,
        ):
            orjson.loads(await response.read())
            response.raise_for_status()

    async def _list(
        self,
        session: aiohttp.ClientSession,
        limiter: anyio.CapacityLimiter,
        namespace: str,
        into: dict[tuple[str, str], Any],
    ) -> None:
        async def listed(prefix: str, plural: str) -> None:
            url = f"{self.server}{prefix}/namespaces/{namespace}/{plural}"
            async with limiter, session.get(url) as response:
                response.raise_for_status()
                for item in orjson.loads(await response.read())["items"]:
                    into[(plural, item["metadata"]["name"])] = item

        async with anyio.create_task_group() as tasks:
            for prefix, plural in PATHS.values():
                tasks.start_soon(listed, prefix, plural)

    async def run(
        self, docs: Sequence[dict[str, Any]], concurrency: int, *, list_namespace: str | None
    ) -> float:
        """The wire ceiling: seconds to LIST each kind in ``list_namespace`` (if given), then
        PATCH ``docs``, which are given parsed and already known to be the changed ones."""
        requests = [(self._url(doc), orjson.dumps(doc)) for doc in docs]
        limiter = anyio.CapacityLimiter(concurrency)
        started = time.perf_counter()
        async with self.session(concurrency) as session:
            if list_namespace is not None:
                await self._list(session, limiter, list_namespace, {})
            async with anyio.create_task_group() as tasks:
                for url, body in requests:
                    tasks.start_soon(self._patch, session, limiter, url, body)
        return time.perf_counter() - started

    async def run_files(
        self, directory: Path, concurrency: int, *, list_namespace: str | None
    ) -> tuple[float, int]:
        """The file ceiling: what a raw applier does given the engine's input, timed whole.

        Read and parse the same YAML files (PyYAML's C loader, the engine's, without its
        checks); on update and no-op, LIST each kind and PATCH only the objects not contained
        in live (``contained``); cold, PATCH every object. Seconds and the number of PATCHes."""
        limiter = anyio.CapacityLimiter(concurrency)
        started = time.perf_counter()
        docs = await anyio.to_thread.run_sync(parse_directory, directory)  # as the engine does
        async with self.session(concurrency) as session:
            if list_namespace is not None:
                live: dict[tuple[str, str], Any] = {}
                await self._list(session, limiter, list_namespace, live)
                # LIST items carry no apiVersion and kind; the lookup key matched those.
                docs = [
                    d
                    for d in docs
                    if not contained(
                        {k: v for k, v in d.items() if k not in ("apiVersion", "kind")},
                        live.get((PATHS[d["kind"]][1], d["metadata"]["name"])),
                    )
                ]
            async with anyio.create_task_group() as tasks:
                for doc in docs:
                    tasks.start_soon(
                        self._patch, session, limiter, self._url(doc), orjson.dumps(doc)
                    )
        return time.perf_counter() - started, len(docs)


def parse_directory(directory: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for file in sorted(directory.glob("*.yaml")):
        docs.extend(yaml.load_all(file.read_bytes(), Loader=yaml.CSafeLoader))
    return docs


def contained(desired: object, live: object) -> bool:
    """The least a raw applier must check to skip an object: every declared value is live."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            k in live and contained(v, live[k]) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(contained(d, x) for d, x in zip(desired, live, strict=True))
        )
    return type(desired) is type(live) and desired == live


def profiled(directory: Path | None, path: str, n: int, repeat: int) -> Path | None:
    return directory / f"{path}-{n}-{repeat}.pstats" if directory else None


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def measure(kubeconfig: Path, args: argparse.Namespace, workdir: Path) -> None:
    raw = RawClient(kubeconfig, workdir)
    rows: list[dict[str, Any]] = []
    run_id = os.urandom(3).hex()
    for n in [int(s) for s in args.sizes.split(",")]:
        changed = every_tenth(n)
        for repeat in range(args.repeats):
            engine_ns, raw_ns, files_ns = (
                f"bench-{who}-{run_id}-{n}-{repeat}" for who in ("engine", "raw", "files")
            )
            namespace_doc = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": engine_ns},
            }
            await raw.create_namespace(raw_ns)
            await raw.create_namespace(files_ns)
            profiles = Path(args.profile) if args.profile else None
            directory = workdir / f"objects-{n}-{repeat}"
            raw_directory = workdir / f"raw-{n}-{repeat}"

            load = os.getloadavg()[0]
            write_directory(directory, [*manifests(n, engine_ns), namespace_doc])
            write_directory(raw_directory, manifests(n, files_ns))
            cold = run_child(
                directory, kubeconfig, args.concurrency, profiled(profiles, "cold", n, repeat)
            )
            raw_cold = await raw.run(manifests(n, raw_ns), args.concurrency, list_namespace=None)
            files_cold = await raw.run_files(raw_directory, args.concurrency, list_namespace=None)
            write_directory(directory, [*manifests(n, engine_ns, changed=changed), namespace_doc])
            write_directory(raw_directory, manifests(n, files_ns, changed=changed))
            update = run_child(
                directory, kubeconfig, args.concurrency, profiled(profiles, "update", n, repeat)
            )
            new = [d for i, d in enumerate(manifests(n, raw_ns, changed=changed)) if i in changed]
            raw_update = await raw.run(new, args.concurrency, list_namespace=raw_ns)
            files_update = await raw.run_files(
                raw_directory, args.concurrency, list_namespace=files_ns
            )
            noop = run_child(
                directory, kubeconfig, args.concurrency, profiled(profiles, "noop", n, repeat)
            )
            raw_noop = await raw.run([], args.concurrency, list_namespace=raw_ns)
            files_noop = await raw.run_files(
                raw_directory, args.concurrency, list_namespace=files_ns
            )
            for path, result, ceiling, (files_s, patched) in (
                ("cold", cold, raw_cold, files_cold),
                ("update", update, raw_update, files_update),
                ("noop", noop, raw_noop, files_noop),
            ):
                rows.append(
                    {
                        "objects": n,
                        "path": path,
                        "repeat": repeat,
                        "load_1m": load,
                        "engine_s": result["seconds"],
                        "raw_s": ceiling,
                        "engine_vs_raw": ceiling / result["seconds"],
                        "files_s": files_s,
                        "files_patched": patched,
                        "engine_vs_files": files_s / result["seconds"],
                        "totals": ",".join(f"{k}={v}" for k, v in sorted(result["totals"].items())),
                        "engine_peak_rss_mib": result["peak_rss_mib"],
                        **{f"{k}_s": v for k, v in result["stages"].items()},
                    }
                )
            print(rows[-3:], file=sys.stderr, flush=True)
    sizes = sorted({r["objects"] for r in rows})
    medians = {
        ratio: {
            f"{n}/{path}": summary(
                [r[ratio] for r in rows if (r["objects"], r["path"]) == (n, path)]
            )
            for n in sizes
            for path in ("cold", "update", "noop")
        }
        for ratio in ("engine_vs_raw", "engine_vs_files")
    }
    emit(
        "apply",
        rows,
        extra={
            "concurrency": args.concurrency,
            "repeats": args.repeats,
            **medians,
            "load_average": os.getloadavg(),
        },
    )
    stage_names = (*STAGES, "requests", "other")
    for n in sizes:
        for path in ("cold", "update", "noop"):
            mine = [r for r in rows if (r["objects"], r["path"]) == (n, path)]
            total = statistics.median(r["engine_s"] for r in mine)
            parts = ", ".join(
                f"{stage} {100 * statistics.median(r[stage + '_s'] for r in mine) / total:.0f}%"
                for stage in stage_names
            )
            print(f"{n}/{path}: engine median {total:.3f} s: {parts}")
    for ratio, values in medians.items():
        for key, value in values.items():
            spread = f"{value['min']:.3f}-{value['max']:.3f}"
            print(f"{key}: {ratio} median {value['median']:.3f} ({spread})")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-") as tmp:
        if args.kubeconfig:
            await measure(args.kubeconfig, args, Path(tmp))
            return
        from aioreconcile.testing import start_control_plane

        async with start_control_plane() as plane:
            await measure(plane.kubeconfig, args, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument("--profile", default=None, help="write a cProfile per engine apply here")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        if arguments.profile:
            with cProfile.Profile() as profiler:
                anyio.run(child, arguments.child, arguments.kubeconfig, arguments.concurrency)
            profiler.dump_stats(arguments.profile)
        else:
            anyio.run(child, arguments.child, arguments.kubeconfig, arguments.concurrency)
    else:
        anyio.run(main, arguments)
