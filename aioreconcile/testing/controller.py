"""``aioreconcile run`` as a child process, the way the fault tests and the benchmarks run it.

A separate process, not a task in the caller's event loop, because what they measure or break
belongs to a process: it can be killed with SIGKILL mid-apply and started again on the same
ports and Git cache, frozen with SIGSTOP, and its resident memory and open file descriptors read
from ``/proc/<pid>``. One starter for all of them, and one argv (``run_argv``: listeners on
loopback, the inventory namespace, the cache directory; file mode or CRD mode) also for the
e2e tests that run it as an anyio process, so it is written once.

Webhook secrets reach the child through its environment (inherited, or ``env``), never its
argv, so neither ``ps`` nor the ``--- starting`` line of its log shows them.
"""

import hashlib
import hmac
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aioreconcile.testing.controlplane import free_port
from aioreconcile.testing.processes import ManagedProcess


@dataclass(frozen=True)
class ControllerProcess:
    """A made (not yet started) controller: ``process.start()``, ``kill9()``, ``pause()``..."""

    process: ManagedProcess
    port: int  # webhooks: /hooks/<receiver>
    ops_port: int  # /status, /metrics, /readyz
    config_path: Path

    @property
    def hooks(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/"

    @property
    def ops(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"


def controller_process(
    config: Mapping[str, Any],
    *,
    kubeconfig: Path,
    namespace: str,
    workdir: Path,
    name: str = "controller",
    cache_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    module: str = "aioreconcile",
) -> ControllerProcess:
    """Write ``config`` to ``<workdir>/<name>.yaml`` and make the process that runs it, logging
    to ``<workdir>/<name>.log``, with its Git cache in ``cache_dir`` (default
    ``<workdir>/<name>-git-cache``) and inventories in ``namespace``. Ports are picked now and
    kept across restarts. ``module`` is what ``python -m`` runs: ``aioreconcile``, or a wrapper
    of its command line (``bench.memdump`` runs it under tracemalloc)."""
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(dict(config)))
    port, ops_port = free_port(), free_port()
    argv = run_argv(
        kubeconfig=kubeconfig,
        port=port,
        ops_port=ops_port,
        cache_dir=cache_dir or workdir / f"{name}-git-cache",
        config=config_path,
        namespace=namespace,
        extra_args=extra_args,
        module=module,
    )
    process = ManagedProcess(name, argv, log_path=workdir / f"{name}.log", env=env)
    return ControllerProcess(process, port, ops_port, config_path)


def run_argv(
    *,
    kubeconfig: Path,
    port: int,
    ops_port: int,
    cache_dir: Path,
    config: Path | None = None,
    namespace: str | None = None,
    extra_args: Sequence[str] = (),
    module: str = "aioreconcile",
) -> list[str]:
    """The argv of ``aioreconcile run`` on loopback ``port`` (webhooks) and ``ops_port``:
    file mode with ``config``, CRD mode without. ``namespace`` is the inventory namespace
    (``--namespace``), left to the default when None."""
    return [
        sys.executable,
        "-m",
        module,
        "run",
        *(["--config", str(config)] if config is not None else []),
        "--kubeconfig",
        str(kubeconfig),
        "--listen",
        f"127.0.0.1:{port}",
        "--ops-listen",
        f"127.0.0.1:{ops_port}",
        *(["--namespace", namespace] if namespace is not None else []),
        "--cache-dir",
        str(cache_dir),
        *extra_args,
    ]


def leader_election_args(
    namespace: str, identity: str, *, lease_s: float, renew_s: float, retry_s: float
) -> list[str]:
    """The ``--leader-election-*`` options (not ``--leader-elect`` itself: ``--shards`` elects
    per shard) with the Lease in ``namespace`` held as ``identity``."""
    return [
        "--leader-election-namespace",
        namespace,
        "--leader-election-identity",
        identity,
        "--leader-election-lease-duration",
        f"{lease_s}s",
        "--leader-election-renew-deadline",
        f"{renew_s}s",
        "--leader-election-retry-period",
        f"{retry_s}s",
    ]


def github_push(
    secret: str, *, clone_url: str, sha: str, before: str = "0" * 40, ref: str = "refs/heads/main"
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a GitHub ``push`` delivery naming ``sha``, signed with
    ``secret`` (``X-Hub-Signature-256``) under a fresh delivery id: what GitHub sends."""
    body = json.dumps(
        {
            "ref": ref,
            "before": before,
            "after": sha,
            "created": False,
            "deleted": False,
            "forced": False,
            "repository": {"clone_url": clone_url},
            "head_commit": {"id": sha, "message": "change"},
            "commits": [{"id": sha, "message": "change"}],
        }
    ).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={signature}",
        "Content-Type": "application/json",
    }
