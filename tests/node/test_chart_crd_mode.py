"""The Helm chart on the real node in CRD mode with leader election: `helm install` without
`config`, 2 replicas, tuned lease timings (lease 3 s, renew 2 s, retry 0.5 s); a Sync created
with `kubectl apply` (its repository on a git daemon on the node address, as test_chart.py)
becomes Ready; drift is healed. Then failover, as docs/install.md "What failover costs" reports
it: the leader pod's container is killed with SIGKILL through the node's containerd (`ctr task
kill`), right after a commit is pushed (no webhook, a 1 h interval: only the new leader's
takeover reconcile, which fetches every ref's head, can apply it) and right before a managed
object is edited; the time until the other replica holds the Lease, until the pushed commit is
applied and until the drift is healed, over as many kills as fit in a bounded time."""

import json
import statistics
import time
from typing import Any

import anyio
import pytest
import yaml

from aioreconcile.testing.node import Node
from aioreconcile.testing.toolchain import require
from tests.node.conftest import Kubectl
from tests.node.test_chart import (  # noqa: F401 (served is a fixture)
    CHART,
    Repository,
    helm,
    push_webhook,
    ready,
    served,
)

pytestmark = pytest.mark.node

RELEASE = "crd"
LEASE = f"{RELEASE}-aioreconcile"  # the chart's default: the full name
SYNC = "app"
STEADY = "steady"  # a managed ConfigMap no commit changes: the one drifted
KILLS = 10
KILLS_AT_LEAST = 5
KILLS_BUDGET_S = 240.0
TIMINGS = {"leaseDuration": "3s", "renewDeadline": "2s", "retryPeriod": "500ms"}


def steady_manifest() -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": STEADY},
            "data": {"VALUE": "steady"},
        }
    )


def sync_manifest(url: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "aioreconcile.dev/v1alpha1",
        "kind": "Sync",
        "metadata": {"name": SYNC},
        "spec": {
            # A long interval: after the first reconcile only a takeover or drift moves it.
            "source": {"url": url, "ref": "main", "path": "deploy", "interval": "1h"},
            "targetNamespace": namespace,
        },
    }


async def controller_pods(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    pods = await kubectl.json(
        "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={RELEASE}"
    )
    items: list[dict[str, Any]] = pods["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


async def data_of(node: Node, namespace: str, name: str) -> dict[str, str] | None:
    found = await node.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
    return None if found is None else dict(found.get("data") or {})


async def wait_data(
    node: Node, namespace: str, name: str, key: str, want: str, *, within_s: float
) -> None:
    with anyio.fail_after(within_s):
        while ((await data_of(node, namespace, name)) or {}).get(key) != want:
            await anyio.sleep(0.05)


async def holder(node: Node, namespace: str) -> str:
    lease = await node.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}")
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


async def drift(kubectl: Kubectl, namespace: str) -> None:
    await kubectl(
        "patch",
        "configmap",
        STEADY,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"data": {"VALUE": "drifted"}}),
    )


async def leader_and_standby(
    node: Node, kubectl: Kubectl, namespace: str, *, within_s: float = 120
) -> tuple[dict[str, Any], str]:
    """Wait for 2 Ready pods, one of them holding the Lease; return it and its identity."""
    seen: list[tuple[str, bool]] = []
    identity = ""
    with anyio.move_on_after(within_s):
        while True:
            pods = await controller_pods(kubectl, namespace)
            identity = await holder(node, namespace)
            leaders = [p for p in pods if identity.startswith(f"{p['metadata']['name']}_")]
            if len(pods) == 2 and all(ready(p) for p in pods) and leaders:
                return leaders[0], identity
            seen = [(p["metadata"]["name"], ready(p)) for p in pods]
            await anyio.sleep(0.3)
    raise AssertionError(f"no leader and Ready standby: pods {seen}, Lease holder {identity!r}")


async def install(
    node: Node, kubectl: Kubectl, namespace: str, image: str, repository: Repository, url: str
) -> float:
    """Install the chart in CRD mode and apply the Sync; return seconds until it was Ready."""
    (repository.work / "deploy").mkdir(parents=True, exist_ok=True)
    (repository.work / "deploy" / "steady.yaml").write_text(steady_manifest())
    repository.commit("one")
    name, tag = image.rsplit(":", 1)
    values: dict[str, Any] = {
        "image": {"repository": name, "tag": tag, "pullPolicy": "Never"},
        "replicas": 2,
        "leaderElection": {"enabled": True, **TIMINGS},
        "watchNamespace": namespace,
        "terminationGracePeriodSeconds": 5,
        "readinessProbe": {"periodSeconds": 1, "initialDelaySeconds": 0},
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
    }
    await helm(
        node,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--wait",
        "--timeout=180s",
        values=values,
    )
    deployment = await kubectl.json("get", "deployment", LEASE, "-n", namespace)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--config" not in args
    assert "--leader-elect" in args
    began = time.monotonic()
    await kubectl.apply(namespace, sync_manifest(url, namespace))
    await kubectl(
        "wait", "-n", namespace, f"sync/{SYNC}", "--for=condition=Ready", "--timeout=120s"
    )
    return time.monotonic() - began


async def uninstall(node: Node, namespace: str) -> None:
    """The release's ClusterRole is cluster-wide: remove it even when the test failed (an
    install that failed has nothing to uninstall: that error is not this one's)."""
    await anyio.run_process(
        [
            str(require("helm")),
            f"--kubeconfig={node.kubeconfig}",
            *("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout=120s"),
            "--ignore-not-found",
        ],
        check=False,
    )


async def test_crd_mode_with_two_replicas_makes_a_kubectl_sync_ready_and_heals_drift(
    node: Node,
    kubectl: Kubectl,
    node_namespace: str,
    product_image: str,
    served: tuple[Repository, str],  # noqa: F811
) -> None:
    namespace = node_namespace
    repository, url = served
    try:
        ready_s = await install(node, kubectl, namespace, product_image, repository, url)
        print(f"kubectl apply sync -> Ready: {ready_s:.1f} s")
        await wait_data(node, namespace, "app-settings", "GREETING", "one", within_s=10)
        sync = await kubectl.json("get", "sync", SYNC, "-n", namespace)
        (condition,) = [c for c in sync["status"]["conditions"] if c["type"] == "Ready"]
        assert condition["status"] == "True", condition
        _, identity = await leader_and_standby(node, kubectl, namespace)
        print(f"leader {identity}")

        began = time.monotonic()
        await drift(kubectl, namespace)
        await wait_data(node, namespace, STEADY, "VALUE", "steady", within_s=30)
        print(f"drift healed in {time.monotonic() - began:.2f} s")
        # The leader healed it; the standby wrote nothing (the Lease never moved).
        assert await holder(node, namespace) == identity

        # A webhook sent to the standby pod itself: it serves the Receiver and records the
        # push on the Sync with the chart's RBAC (patch on syncs), and the leader applies it.
        path = await receiver(kubectl, node, namespace)
        pods = await controller_pods(kubectl, namespace)
        (standby,) = [p for p in pods if not identity.startswith(f"{p['metadata']['name']}_")]
        sha = repository.commit("pushed to the standby")
        began = time.monotonic()
        address, target = standby["status"]["podIP"], f"8080{path}"
        with anyio.fail_after(30):  # the standby serves the path once its Receiver watch saw it
            while True:
                code, answer = await push_webhook(
                    address, url, sha, target=target, secret=HOOK_TOKEN
                )
                if code != 404:
                    break
                await anyio.sleep(0.2)
        assert code == 202, answer
        assert answer["triggered"] == [f"{namespace}.{SYNC}"]
        sync = await kubectl.json("get", "sync", SYNC, "-n", namespace)
        assert sync["metadata"]["annotations"]["reconcile.aioreconcile.dev/revision"] == sha
        await wait_data(
            node, namespace, "app-settings", "GREETING", "pushed to the standby", within_s=30
        )
        took = time.monotonic() - began
        print(f"webhook to the standby pod -> applied by the leader in {took:.2f} s")
        assert await holder(node, namespace) == identity
    finally:
        await uninstall(node, namespace)


HOOK_TOKEN = "crd-mode-hook-token"


async def receiver(kubectl: Kubectl, node: Node, namespace: str) -> str:
    """A generic-hmac Receiver for the Sync, its token in a Secret; its served path."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hook"},
        "stringData": {"token": HOOK_TOKEN},
    }
    hook = {
        "apiVersion": "aioreconcile.dev/v1alpha1",
        "kind": "Receiver",
        "metadata": {"name": "hook"},
        "spec": {"provider": "generic-hmac", "secretRef": {"name": "hook"}, "syncs": [SYNC]},
    }
    await kubectl.apply(namespace, secret)
    await kubectl.apply(namespace, hook)
    with anyio.fail_after(60):
        while True:
            found = await node.get(
                f"/apis/aioreconcile.dev/v1alpha1/namespaces/{namespace}/receivers/hook"
            )
            path = ((found or {}).get("status") or {}).get("webhookPath")
            if path:
                return str(path)
            await anyio.sleep(0.2)


def container_id(pod: dict[str, Any]) -> str:
    (status,) = pod["status"]["containerStatuses"]
    runtime, _, identifier = str(status["containerID"]).partition("://")
    assert runtime == "containerd", status
    return identifier


async def test_killing_the_leader_container_hands_over_applies_the_last_push_and_heals(
    node: Node,
    kubectl: Kubectl,
    node_namespace: str,
    product_image: str,
    served: tuple[Repository, str],  # noqa: F811
) -> None:
    namespace = node_namespace
    repository, url = served
    lead_s: list[float] = []
    pushed_s: list[float] = []
    healed_s: list[float] = []
    try:
        await install(node, kubectl, namespace, product_image, repository, url)
        began = time.monotonic()
        while len(lead_s) < KILLS and time.monotonic() - began < KILLS_BUDGET_S:
            leader, identity = await leader_and_standby(node, kubectl, namespace)
            greeting = f"kill-{len(lead_s)}"
            repository.commit(greeting)  # pushed; nobody is told (no webhook, 1 h interval)
            killed = await anyio.run_process(
                node.ctr("tasks", "kill", "--signal", "SIGKILL", container_id(leader)),
                check=False,
            )
            assert killed.returncode == 0, killed.stderr.decode()
            t0 = time.monotonic()
            await drift(kubectl, namespace)
            with anyio.fail_after(30):
                while (now := await holder(node, namespace)) in (identity, ""):
                    await anyio.sleep(0.05)
            lead_s.append(time.monotonic() - t0)
            await wait_data(node, namespace, "app-settings", "GREETING", greeting, within_s=30)
            pushed_s.append(time.monotonic() - t0)
            await wait_data(node, namespace, STEADY, "VALUE", "steady", within_s=30)
            healed_s.append(time.monotonic() - t0)
            print(
                f"kill {len(lead_s)}: {leader['metadata']['name']} -> {now}: leads "
                f"{lead_s[-1]:.2f} s, push applied {pushed_s[-1]:.2f} s, drift healed "
                f"{healed_s[-1]:.2f} s"
            )
            # A fresh pod for the next round: the killed container's restarts would back off.
            await kubectl(
                "delete", "pod", leader["metadata"]["name"], "-n", namespace, "--wait=false"
            )
    finally:
        await uninstall(node, namespace)
    for what, figures in (("leads", lead_s), ("push", pushed_s), ("healed", healed_s)):
        print(
            f"{what}: n={len(figures)} p50 {statistics.median(figures):.2f} s "
            f"max {max(figures):.2f} s: {', '.join(f'{f:.2f}' for f in figures)}"
        )
    assert len(lead_s) >= KILLS_AT_LEAST
    # Expiry on the standby's clock: lease duration + up to 1.2 retry periods, plus polling.
    assert max(lead_s) < 3 + 0.6 + 1.5, lead_s
    assert max(healed_s) < 10, healed_s
