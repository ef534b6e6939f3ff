"""The same manifests applied by ``kubectl apply --server-side`` and by ``aioreconcile apply``.

    python -m bench.peers [--sizes 1000,5000] [--repeats 1] [--kubectl PATH] [--kubeconfig K]

What a user would otherwise script, side by side on the same apiserver in one run. For each N,
realistic manifests (bench/manifests.py) are written to a directory per tool (its own
Namespace, declared in the directory), and each tool's CLI is timed as a whole process (start-up,
parsing, discovery included): ``cold`` into an empty Namespace, then ``reapply`` of the same
directory (nothing changed). kubectl is the one the project builds (hack/testenv/build.sh, the
apiserver's version) unless --kubectl names another; it applies with ``--server-side
--force-conflicts``, aioreconcile with its defaults (concurrency 16). ``ratio`` is kubectl's
seconds / aioreconcile's: how many times faster aioreconcile is.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import yaml

from bench.manifests import manifests
from bench.reporting import emit


def write_directory(directory: Path, namespace: str, n: int) -> None:
    directory.mkdir(parents=True)
    (directory / "00-namespace.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    )
    docs = manifests(n, namespace)
    for start in range(0, n, 100):
        (directory / f"objects-{start:05d}.yaml").write_text(
            yaml.safe_dump_all(docs[start : start + 100], sort_keys=False)
        )


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return seconds


def kubectl_binary(explicit: str | None) -> str:
    if explicit:
        return explicit
    printed = subprocess.run(
        ["bash", "hack/testenv/build.sh", "--print-bin-dir", "kubectl"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if printed.startswith("kubectl="):
        built = Path(printed.partition("=")[2])
        return str(built if built.is_file() else built / "kubectl")
    found = shutil.which("kubectl")
    if found is None:
        raise SystemExit("no kubectl: build it (hack/testenv/build.sh) or pass --kubectl")
    return found


def measure(kubeconfig: Path, args: argparse.Namespace, workdir: Path) -> None:
    kubectl = kubectl_binary(args.kubectl)
    version = subprocess.run(
        [kubectl, "version", "--client", "-o", "yaml"], capture_output=True, text=True, check=False
    ).stdout
    run_id = os.urandom(3).hex()
    rows: list[dict[str, Any]] = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for repeat in range(args.repeats):
            seconds: dict[tuple[str, str], float] = {}
            for tool in ("kubectl", "aioreconcile"):
                namespace = f"peers-{tool}-{run_id}-{n}-{repeat}"
                directory = workdir / namespace
                write_directory(directory, namespace, n)
                if tool == "kubectl":
                    argv = [kubectl, "--kubeconfig", str(kubeconfig), "apply", "--server-side"]
                    argv += ["--force-conflicts", "--field-manager", "bench-kubectl"]
                    argv += ["-f", str(directory)]
                else:
                    argv = [sys.executable, "-m", "aioreconcile", "apply", str(directory)]
                    argv += ["--kubeconfig", str(kubeconfig), "--sync", namespace]
                for path in ("cold", "reapply"):
                    seconds[tool, path] = timed(argv)
            for path in ("cold", "reapply"):
                rows.append(
                    {
                        "objects": n,
                        "path": path,
                        "repeat": repeat,
                        "kubectl_s": seconds["kubectl", path],
                        "aioreconcile_s": seconds["aioreconcile", path],
                        "ratio": seconds["kubectl", path] / seconds["aioreconcile", path],
                    }
                )
            print(rows[-2:], file=sys.stderr, flush=True)
    ratios = {
        f"{n}/{path}": statistics.median(
            r["ratio"] for r in rows if (r["objects"], r["path"]) == (n, path)
        )
        for n in sorted({r["objects"] for r in rows})
        for path in ("cold", "reapply")
    }
    emit(
        "peers",
        rows,
        extra={
            "kubectl": kubectl,
            "kubectl_version": yaml.safe_load(version).get("clientVersion", {}).get("gitVersion"),
            "ratio_kubectl_over_aioreconcile": ratios,
            "load_average": os.getloadavg(),
        },
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="aioreconcile-bench-peers-") as tmp:
        if args.kubeconfig:
            await anyio.to_thread.run_sync(measure, args.kubeconfig, args, Path(tmp))
            return
        from aioreconcile.testing import start_control_plane

        async with start_control_plane() as plane:
            await anyio.to_thread.run_sync(measure, plane.kubeconfig, args, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--kubectl", default=None, help="default: the one the project builds")
    parser.add_argument("--kubeconfig", type=Path, default=None)
    anyio.run(main, parser.parse_args())
