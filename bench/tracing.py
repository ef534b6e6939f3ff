"""What tracing costs ``aioreconcile run``: the same pushes through two controllers, one
exporting every span the reactor creates to a real Jaeger, one with tracing off, interleaved.

    python -m bench.tracing [--objects 1000] [--rounds 20] [--kubeconfig K]

Without --kubeconfig it starts its own real control plane; it always starts a real Jaeger
(``aioreconcile.testing.start_jaeger``) and ``git daemon``. Two ``aioreconcile run`` processes
(bench.running), each with one sync (``--objects`` ConfigMaps in a Namespace of their own, own
repository) and a GitHub receiver: ``off`` with no OTEL variable, ``on`` with
``OTEL_EXPORTER_OTLP_ENDPOINT`` (and ``OTEL_SERVICE_NAME``) pointing at Jaeger, as users set
them, so its spans go through run's own setup (BatchSpanProcessor, OTLP/HTTP).

A round commits a new ``data.value`` for every ConfigMap of one controller's repository (not
timed), waits until that controller is quiet, then sends a signed push webhook (t0). Timed:

- ``applied``: t0 to the last changed object seen by this process's own watch;
- ``recorded``: t0 to ``GET /status`` showing the commit applied;
- ``cpu``: the controller's CPU time (git children included) from just before t0 until it is
  quiet again, after the ``on`` controller's trace is complete in Jaeger: the export of the
  round's spans (about N + 15) is inside it;
- ``exported`` (``on`` only): t0 until Jaeger's query API returns the commit's trace with its
  root and all N object spans;
- ``apiserver_cpu``, ``etcd_cpu`` (when the benchmark started them) and ``jaeger_cpu``: each
  process's CPU over the same window as ``cpu``: what a push costs the rest of the machine (the
  ``traceparent`` stamp makes each apply body, stored object and watch event larger). Jaeger's
  includes its answers to the benchmark's own trace queries, so it is not the export's alone.

Each round runs both controllers, the order swapped every round (off-on, on-off, ...), so a pair
shares the machine's conditions (``--unsampled``: the six orders of three in turn). The overhead
is the ratio on/off of each pair, reported as the geometric mean with a 95 % bootstrap
confidence interval, plus the medians and the spread of each mode. The first push of each
controller is a warm-up, not counted. Both controllers watch cluster-wide (file mode), so each
also receives the other's watch events: the same for both modes.
"""

import argparse
import contextlib
import hashlib
import hmac
import itertools
import math
import os
import platform
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson

from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.adapters.telemetry.jaeger_query import search_url
from aioreconcile.engine.model import JsonObject
from bench.drift import (
    Objects,
    Repository,
    cpu_seconds,
    git_daemon,
    key_of,
    remove,
    watch_configmaps,
)
from bench.reporting import emit
from bench.running import Controller, run_controller

SECRET_ENV = "BENCH_WEBHOOK_SECRET"
MODES = ("off", "on")
UNSAMPLED = "unsampled"
LIMIT_S = 120.0
TIMED = ("applied_s", "recorded_s", "cpu_s", "cpu_self_s")  # per round, compared in pairs
# The other processes' CPU when measured; Jaeger's is ~0 with tracing off, so it is no ratio.
PLANE_CPU = ("apiserver_cpu_s", "etcd_cpu_s")
OTHERS_CPU = (*PLANE_CPU, "jaeger_cpu_s")


@dataclass
class Side:
    mode: str
    sync: str
    objects: Objects
    repo: Repository
    url: str
    controller: Controller
    sha: str


class Seen:
    """This process's watch: when every expected ``data.value`` has been seen."""

    def __init__(self) -> None:
        self.expected: dict[tuple[str, str], str] = {}
        self.done = anyio.Event()
        self.last = 0.0

    def expect(self, values: dict[tuple[str, str], str]) -> None:
        self.expected = dict(values)
        self.done = anyio.Event()

    def on_event(self, kind: str, obj: JsonObject, now: float) -> None:
        key = key_of(obj)
        value = self.expected.get(key)
        if (
            kind == "MODIFIED"
            and value is not None
            and (obj.get("data") or {}).get("value") == value
        ):
            del self.expected[key]
            if not self.expected:
                self.last = now
                self.done.set()


async def send_push(session: aiohttp.ClientSession, side: Side, before: str, after: str) -> None:
    body = orjson.dumps(
        {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "created": False,
            "deleted": False,
            "forced": False,
            "repository": {"name": side.sync, "clone_url": side.url, "html_url": side.url},
            "head_commit": {"id": after, "message": "bench: change"},
            "commits": [{"id": after, "message": "bench: change"}],
        }
    )
    signature = hmac.new(os.environ[SECRET_ENV].encode(), body, hashlib.sha256).hexdigest()
    async with session.post(
        f"{side.controller.hooks}/github",
        data=body,
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": f"sha256={signature}",
            "Content-Type": "application/json",
        },
    ) as response:
        await response.read()
        if response.status != 202:
            raise SystemExit(f"webhook answered {response.status}, expected 202")


async def trace_complete(
    session: aiohttp.ClientSession, query_url: str, *, service: str, side: Side, sha: str
) -> int:
    """Spans of the commit's trace once Jaeger has its root and every object span; else 0."""
    url = search_url(
        query_url,
        service=service,
        tags={"vcs.ref.head.revision": sha},
        lookback="1h",
        limit=20,
    )
    async with session.get(url) as response:
        document = orjson.loads(await response.read())
    for trace in document.get("data") or []:
        names = [span["operationName"] for span in trace["spans"]]
        if f"reconcile {side.sync}" in names and names.count("apply ConfigMap") >= side.objects.n:
            return len(names)
    return 0


async def push_round(
    side: Side,
    session: aiohttp.ClientSession,
    seen: Seen,
    *,
    round_: int,
    jaeger_query: str,
    service: str,
    others: dict[str, int],
) -> dict[str, Any]:
    objects = side.objects
    for i in range(objects.n):
        objects.values[i] = f"{side.mode}-{round_}-{i}"
    before = side.sha
    side.sha = side.repo.commit(objects.files(range(objects.n)), f"round {round_}")
    seen.expect({objects.ref(i): objects.values[i] for i in range(objects.n)})
    await side.controller.wait_quiet()
    load = os.getloadavg()[0]
    cpu, own = side.controller.cpu_seconds(), side.controller.own_cpu_seconds()
    others_before = {name: cpu_seconds(pid) for name, pid in others.items()}
    t0 = time.perf_counter()
    await send_push(session, side, before, side.sha)
    with anyio.fail_after(LIMIT_S):
        await seen.done.wait()
    applied = seen.last - t0
    await side.controller.wait_applied(session, {side.sync: side.sha}, limit_s=LIMIT_S, poll_s=0.02)
    recorded = time.perf_counter() - t0
    exported, spans = float("nan"), 0
    if side.mode == "on":
        while not (
            spans := await trace_complete(
                session, jaeger_query, service=service, side=side, sha=side.sha
            )
        ):
            if time.perf_counter() - t0 > LIMIT_S:
                raise SystemExit(f"the trace of {side.sha} is not complete in Jaeger")
            await anyio.sleep(0.1)
        exported = time.perf_counter() - t0
    await side.controller.wait_quiet()
    return {
        "round": round_,
        "mode": side.mode,
        "load1": load,
        "applied_s": applied,
        "recorded_s": recorded,
        "cpu_s": side.controller.cpu_seconds() - cpu,
        "cpu_self_s": side.controller.own_cpu_seconds() - own,
        "exported_s": exported,
        "spans": spans,
    } | {f"{name}_cpu_s": cpu_seconds(pid) - others_before[name] for name, pid in others.items()}


def ratio_interval(
    pairs: Sequence[float], *, resamples: int = 10_000, seed: int = 1
) -> tuple[float, float, float]:
    """Geometric mean of the ratios and its 95 % percentile-bootstrap interval."""
    logs = [math.log(r) for r in pairs]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
    return math.exp(statistics.fmean(logs)), math.exp(low), math.exp(high)


def _ratios(results: Sequence[dict[str, Any]], numerator: str, denominator: str) -> dict[str, Any]:
    """Per round, ``numerator``'s figure over ``denominator``'s: geometric mean, 95 % CI."""
    by_round = {(r["round"], r["mode"]): r for r in results}
    rounds = sorted({r["round"] for r in results})
    ratios: dict[str, Any] = {}
    # The apiserver's and etcd's CPU in /proc ticks (10 ms): a ratio only when no round is 0.
    plane = [k for k in PLANE_CPU if all(r.get(k, 0.0) > 0 for r in results)]
    for key in (*TIMED, *plane):
        pairs = [by_round[(n, numerator)][key] / by_round[(n, denominator)][key] for n in rounds]
        mean, low, high = ratio_interval(pairs)
        ratios[key[:-2]] = {
            "ratio_geomean": mean,
            "ci95": [low, high],
            "sd_log_ratio": statistics.stdev(math.log(p) for p in pairs) if len(pairs) > 1 else 0.0,
            "ratio_median": statistics.median(pairs),
            "ratio_min": min(pairs),
            "ratio_max": max(pairs),
            "pairs": pairs,
        }
    return ratios


def summarise(
    results: Sequence[dict[str, Any]], modes: Sequence[str] = MODES
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for mode in modes:
        mine = [r for r in results if r["mode"] == mode]
        row: dict[str, Any] = {"mode": mode, "rounds": len(mine)}
        for key in (*TIMED, "exported_s", *[k for k in OTHERS_CPU if all(k in r for r in mine)]):
            values = [r[key] for r in mine]
            if all(math.isnan(v) for v in values):
                continue
            row[f"{key[:-2]}_p50_s"] = statistics.median(values)
            row[f"{key[:-2]}_min_s"] = min(values)
            row[f"{key[:-2]}_max_s"] = max(values)
        rows.append(row)
    return rows, _ratios(results, "on", "off")


async def measure(
    kubeconfig: Path, args: argparse.Namespace, workdir: Path, plane: dict[str, int] | None = None
) -> None:
    """The rounds; ``plane``: the pids of the apiserver and etcd when started here."""
    from aioreconcile.testing import start_jaeger

    token = secrets.token_hex(3)
    service = f"bench-tracing-{token}"
    os.environ[SECRET_ENV] = secrets.token_hex(32)
    served = workdir / "served"
    served.mkdir()
    modes = (*MODES, UNSAMPLED) if args.unsampled else MODES
    objects = {m: Objects(args.objects, prefix=f"bench-tr-{token}-{m}") for m in modes}
    repos = {m: Repository.create(served, workdir, f"tr-{m}") for m in modes}
    shas = {m: repos[m].commit(objects[m].files(), "initial") for m in modes}
    namespaces = [ns for o in objects.values() for ns in o.namespaces]
    results: list[dict[str, Any]] = []
    async with (
        start_jaeger(workdir / "jaeger") as jaeger,
        git_daemon(served, workdir) as base,
        await KubeTransport.connect(kubeconfig) as transport,
    ):
        exporting = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http_endpoint,
            "OTEL_SERVICE_NAME": service,
        }
        env = {
            "off": {},
            "on": exporting,
            # The SDK and the traceparent stamps, no span recorded or exported.
            UNSAMPLED: {**exporting, "OTEL_TRACES_SAMPLER": "always_off"},
        }
        try:
            async with (
                contextlib.AsyncExitStack() as stack,
                aiohttp.ClientSession() as session,
                anyio.create_task_group() as tasks,
            ):
                controllers = {
                    m: await stack.enter_async_context(
                        run_controller(
                            _config(f"tr-{m}", f"{base}tr-{m}.git"),
                            kubeconfig=kubeconfig,
                            workdir=workdir,
                            namespace=objects[m].namespaces[0],
                            name=m,
                            env=env[m],
                        )
                    )
                    for m in modes
                }
                sides = {
                    m: Side(
                        m,
                        f"tr-{m}",
                        objects[m],
                        repos[m],
                        f"{base}tr-{m}.git",
                        controllers[m],
                        shas[m],
                    )
                    for m in modes
                }
                for m in modes:
                    await controllers[m].wait_applied(
                        session, {f"tr-{m}": shas[m]}, limit_s=600, poll_s=0.2
                    )
                seen = Seen()
                await tasks.start(watch_configmaps, transport, seen.on_event)
                others = dict(plane or {})
                if jaeger.process.pid is not None:
                    others["jaeger"] = jaeger.process.pid
                started = time.time()
                load_before = os.getloadavg()
                orders = list(itertools.permutations(modes))
                for round_ in range(-1, args.rounds):  # round -1: the warm-up
                    # Every order of the modes in turn: off-on, on-off, ... With --unsampled
                    # its six orders put each mode in each position, and right after each
                    # other mode, equally often (a Williams design): a rotation of three left
                    # `off` after `unsampled` in 16 of 25 rounds, and what a push leaves
                    # behind (the apiserver's and the watches' work) fell unevenly.
                    for mode in orders[round_ % len(orders)]:
                        result = await push_round(
                            sides[mode],
                            session,
                            seen,
                            round_=round_,
                            jaeger_query=jaeger.query_url,
                            service=service,
                            others=others,
                        )
                        print(
                            f"round {round_} {mode}: applied {result['applied_s']:.3f} s, "
                            f"cpu {result['cpu_s']:.3f} s (own {result['cpu_self_s']:.3f} s), "
                            f"load {result['load1']:.2f}",
                            file=sys.stderr,
                        )
                        if round_ >= 0:
                            results.append(result)
                tasks.cancel_scope.cancel()
        finally:
            await remove(transport, namespaces)
    rows, overhead = summarise(results, modes)
    decomposed = (
        {
            "unsampled_over_off": _ratios(results, UNSAMPLED, "off"),
            "on_over_unsampled": _ratios(results, "on", UNSAMPLED),
        }
        if args.unsampled
        else {}
    )
    emit(
        "tracing",
        rows,
        extra={
            "command": " ".join(["python -m bench.tracing", *sys.argv[1:]]),
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "load1_min": min(r["load1"] for r in results),
            "load1_max": max(r["load1"] for r in results),
            "objects": args.objects,
            "python": platform.python_version(),
            "overhead": overhead,
            **decomposed,
            "rounds": results,
        },
    )
    named = {"on/off": overhead}
    if decomposed:
        named |= {
            "unsampled/off": decomposed["unsampled_over_off"],
            "on/unsampled": decomposed["on_over_unsampled"],
        }
    for ratio, figures in named.items():
        for key, value in figures.items():
            low, high = value["ci95"]
            print(
                f"{key}: {ratio} {value['ratio_geomean']:.4f} "
                f"(95 % CI {low:.4f}-{high:.4f}, {len(value['pairs'])} pairs), "
                f"median pair {value['ratio_median']:.3f}, "
                f"pairs {value['ratio_min']:.3f}-{value['ratio_max']:.3f}, "
                f"sd of log ratio {value['sd_log_ratio']:.3f}"
            )


def _config(sync: str, url: str) -> dict[str, Any]:
    return {
        "syncs": [
            {
                "name": sync,
                "source": {"url": url, "ref": "main", "path": "deploy", "interval": "1h"},
                "selfHeal": True,
            }
        ],
        "receivers": [
            {"name": "github", "provider": "github", "secretEnv": SECRET_ENV, "syncs": [sync]}
        ],
    }


async def main(args: argparse.Namespace) -> None:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]  # the "off" controller must not inherit a tracing setting
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-tracing-") as tmp:
        try:
            if args.kubeconfig:
                await measure(args.kubeconfig, args, Path(tmp))
                return
            from aioreconcile.testing import start_control_plane

            async with start_control_plane() as plane:
                pids = {"apiserver": plane.apiserver.pid, "etcd": plane.etcd.pid}
                await measure(
                    plane.kubeconfig,
                    args,
                    Path(tmp),
                    {name: pid for name, pid in pids.items() if pid is not None},
                )
        finally:
            if args.keep_logs is not None:  # the controllers' JSON logs (stages_ms per push)
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for mode in (*MODES, UNSAMPLED):
                    log = Path(tmp) / f"{mode}.log"
                    if log.exists():
                        shutil.copyfile(log, args.keep_logs / f"{mode}.log")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20, help="pairs measured (after a warm-up)")
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument(
        "--unsampled",
        action="store_true",
        help="a third controller, tracing configured but OTEL_TRACES_SAMPLER=always_off",
    )
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="copy the controllers' logs here at the end"
    )
    anyio.run(main, parser.parse_args())
