"""What tracing costs on the apply path: disabled vs exporting every span to a real Jaeger.

    python -m bench.tracing [--objects 1000] [--runs 5] [--concurrency 16] [--kubeconfig K]

Without --kubeconfig it starts its own real control plane; it always starts a real Jaeger
(``aioreconcile.testing.start_jaeger``) and exports over OTLP/HTTP with the production setup
(``start_tracing``: private provider, BatchSpanProcessor). Each run is a cold in-process
``runtime.apply_directory`` of N objects into a fresh namespace, timed together with the spans the
controller emits for it: the commit root, an ``apply`` stage and one span per ChangeSet entry
(``objects(outcome.changeset.entries, operation="apply")``). Modes alternate (and swap order every
repetition) so drift in the cluster (etcd growing) hits both alike. After each traced run the
batch is flushed outside the timed region, so no export from one run leaks into the next; the
flush time is reported on its own. Target: median overhead < 5 %.
"""

import argparse
import json
import secrets
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio

from bench.apply import objects, write_directory
from bench.reporting import emit

SERVICE = "aioreconcile-bench"


async def _apply_once(
    tracing: Any, directory: Path, kubeconfig: Path, *, concurrency: int, sha: str
) -> tuple[float, int, float]:
    """Seconds of the traced apply, objects applied, and seconds spent in ``objects()``."""
    from aioreconcile import runtime
    from aioreconcile.reactor.tracing import CommitInfo

    settings = runtime.DirectorySettings(
        path=directory,
        sync="bench-tracing",
        concurrency=concurrency,
        cluster=runtime.ClusterSettings(kubeconfig=kubeconfig),
    )
    info = CommitInfo(
        sync="bench-tracing",
        repository_url="https://git.example.com/acme/deploy.git",
        ref="main",
        ref_type="branch",
        sha=sha,
        trigger="push",
    )
    started = time.perf_counter()
    with tracing.commit(info), tracing.stage("apply") as stage:
        outcome = await runtime.apply_directory(settings)
        spans_began = time.perf_counter()
        tracing.objects(outcome.changeset.entries, operation="apply")
        span_seconds = time.perf_counter() - spans_began
        stage.set_attributes({"aioreconcile.objects": len(outcome.changeset.entries)})
    seconds = time.perf_counter() - started
    if not outcome.ok:
        raise SystemExit(f"apply failed: {outcome.message}")
    return seconds, len(outcome.changeset.entries), span_seconds


def _count_traces(query_url: str) -> int:
    with urllib.request.urlopen(
        f"{query_url}/api/traces?service={SERVICE}&limit=1000", timeout=10
    ) as response:
        return len(json.loads(response.read()).get("data") or [])


async def measure(kubeconfig: Path, *, n: int, runs: int, concurrency: int, workdir: Path) -> None:
    from aioreconcile.adapters.telemetry.setup import TracingSettings, start_tracing
    from aioreconcile.reactor.tracing import NoTracing
    from aioreconcile.testing import start_jaeger

    async with start_jaeger() as jaeger:
        disabled = start_tracing(TracingSettings())
        exporting = start_tracing(
            TracingSettings(endpoint=jaeger.otlp_http_endpoint, service_name=SERVICE)
        )
        handles = {"disabled": disabled, "jaeger": exporting}
        samples: dict[str, list[float]] = {"disabled": [], "jaeger": []}
        span_costs: list[float] = []
        flushes: list[float] = []
        applied = 0
        # Warm-up: imports, discovery cache, connection setup, first namespace.
        warm = workdir / "warm"
        write_directory(warm, _docs(n, f"bench-tr-warm-{secrets.token_hex(3)}"))
        await _apply_once(NoTracing(), warm, kubeconfig, concurrency=concurrency, sha="0" * 40)
        for repetition in range(runs):
            order = ["disabled", "jaeger"] if repetition % 2 == 0 else ["jaeger", "disabled"]
            for mode in order:
                directory = workdir / f"{mode}-{repetition}"
                write_directory(
                    directory, _docs(n, f"bench-tr-{mode[0]}{repetition}-{secrets.token_hex(3)}")
                )
                seconds, applied, span_seconds = await _apply_once(
                    handles[mode].tracing or NoTracing(),
                    directory,
                    kubeconfig,
                    concurrency=concurrency,
                    sha=secrets.token_hex(20),
                )
                samples[mode].append(seconds)
                if mode == "jaeger":
                    span_costs.append(span_seconds)
                    began = time.perf_counter()
                    await anyio.to_thread.run_sync(exporting.force_flush)
                    flushes.append(time.perf_counter() - began)
        await anyio.to_thread.run_sync(exporting.shutdown)
        await anyio.sleep(1.0)  # Jaeger's own batch (200 ms) before we count
        exported = await anyio.to_thread.run_sync(_count_traces, jaeger.query_url)

    off = statistics.median(samples["disabled"])
    on = statistics.median(samples["jaeger"])
    # Runs of one repetition are neighbours in time; their ratio cancels the cluster's drift.
    paired = statistics.median(
        j / d for d, j in zip(samples["disabled"], samples["jaeger"], strict=True)
    )
    rows = [
        {
            "mode": mode,
            "objects": applied,
            "runs": len(values),
            "median_s": statistics.median(values),
            "min_s": min(values),
            "max_s": max(values),
            "obj_per_s": applied / statistics.median(values),
        }
        for mode, values in samples.items()
    ]
    emit(
        "tracing",
        rows,
        extra={
            "concurrency": concurrency,
            "overhead_pct": (on - off) / off * 100,
            "paired_overhead_pct": (paired - 1) * 100,
            "span_cost_pct": statistics.median(span_costs) / off * 100,
            "objects_spans_median_ms": statistics.median(span_costs) * 1000,
            "flush_after_run_median_ms": statistics.median(flushes) * 1000,
            "traces_in_jaeger": exported,
            "samples": samples,
        },
    )
    print(
        f"\noverhead (median jaeger vs disabled): {(on - off) / off * 100:+.1f} %, "
        f"paired median {(paired - 1) * 100:+.1f} %  "
        f"(objects() {statistics.median(span_costs) * 1000:.1f} ms for {applied} spans; "
        f"{exported} traces in Jaeger)"
    )


def _docs(n: int, namespace: str) -> list[dict[str, Any]]:
    return [
        *objects(n, namespace),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    ]


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-tracing-") as tmp:
        if args.kubeconfig:
            await measure(
                args.kubeconfig,
                n=args.objects,
                runs=args.runs,
                concurrency=args.concurrency,
                workdir=Path(tmp),
            )
            return
        from aioreconcile.testing import start_control_plane

        async with start_control_plane() as plane:
            await measure(
                plane.kubeconfig,
                n=args.objects,
                runs=args.runs,
                concurrency=args.concurrency,
                workdir=Path(tmp),
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kubeconfig", type=Path, default=None)
    anyio.run(main, parser.parse_args())
