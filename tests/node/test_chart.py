"""The Helm chart on the real node: `helm install` of charts/aioreconcile with the freshly built
image, in file mode, syncing from a git daemon on this machine's node address; pods Running and
Ready; a signed webhook sent to the webhook Service's ClusterIP (kube-proxy routes this machine
to it) applies the commit, and its trace reaches a Jaeger whose OTLP receiver listens on the
node address (the chart's `otel` values); drift is healed; the pod is non-root on a read-only
root filesystem; `helm upgrade` to a re-tagged image rolls the pod; `helm uninstall` leaves the
CRDs and the managed objects."""

import hashlib
import hmac
import json
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml

from aioreconcile.testing.jaeger import Jaeger, start_jaeger
from aioreconcile.testing.node import Node
from aioreconcile.testing.processes import ManagedProcess
from aioreconcile.testing.toolchain import require
from tests.git.conftest import git
from tests.node.conftest import Kubectl

pytestmark = pytest.mark.node

CHART = Path(__file__).resolve().parents[2] / "charts" / "aioreconcile"
RELEASE = "gitops"
DEPLOYMENT = f"{RELEASE}-aioreconcile"
WEBHOOK_SECRET = "chart-test-webhook-secret"
UPGRADED_TAG = "upgraded"
SERVICE_NAME = "aioreconcile-chart-test"


def settings(greeting: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app-settings"},
            "data": {"GREETING": greeting},
        }
    )


class Repository:
    """A bare repository served by the git daemon, and a clone to commit from."""

    def __init__(self, root: Path, home: Path) -> None:
        self.bare = root / "served" / "app.git"
        self.work = root / "work"
        self.home = home
        git("init", "--quiet", "--bare", str(self.bare), home=home)
        git("clone", "--quiet", str(self.bare), str(self.work), home=home)

    def commit(self, greeting: str) -> str:
        path = self.work / "deploy" / "settings.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(settings(greeting))
        git("add", "--all", cwd=self.work, home=self.home)
        git("commit", "--quiet", "-m", f"greeting {greeting}", cwd=self.work, home=self.home)
        git("push", "--quiet", "origin", "HEAD:main", cwd=self.work, home=self.home)
        return git("rev-parse", "HEAD", cwd=self.work, home=self.home)


@pytest.fixture
async def served(node: Node, tmp_path: Path) -> AsyncIterator[tuple[Repository, str]]:
    """A git daemon on the node address only (pods route to it; nothing else listens)."""
    home = tmp_path / "home"
    home.mkdir()
    repository = Repository(tmp_path, home)
    with socket.socket() as s:
        s.bind((node.address, 0))
        port = s.getsockname()[1]
    daemon_path = Path(git("--exec-path", home=home)) / "git-daemon"
    daemon = ManagedProcess(
        "git-daemon",
        [
            str(daemon_path),
            "--reuseaddr",
            f"--base-path={tmp_path / 'served'}",
            "--export-all",
            f"--listen={node.address}",
            f"--port={port}",
            str(tmp_path / "served"),
        ],
        log_path=tmp_path / "git-daemon.log",
    )
    daemon.start()
    try:
        with anyio.fail_after(10):
            while True:
                try:
                    with socket.create_connection((node.address, port), timeout=0.2):
                        break
                except OSError:
                    await anyio.sleep(0.05)
        yield repository, f"git://{node.address}:{port}/app.git"
    finally:
        await daemon.stop(grace=2)


async def helm(node: Node, *args: str, values: dict[str, Any] | None = None) -> str:
    argv = [str(require("helm")), f"--kubeconfig={node.kubeconfig}", *args]
    if values is not None:
        argv += ["--values", "-"]
    result = await anyio.run_process(
        argv, input=json.dumps(values).encode() if values is not None else None, check=False
    )
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{out}"
    return out


async def greeting(kubectl: Kubectl, namespace: str) -> str | None:
    found = await kubectl("get", "configmap", "app-settings", "-n", namespace, check=False)
    if found.returncode != 0:
        return None
    cm = await kubectl.json("get", "configmap", "app-settings", "-n", namespace)
    value: str = cm["data"]["GREETING"]
    return value


async def wait_greeting(kubectl: Kubectl, namespace: str, want: str, *, within_s: float) -> float:
    began = time.monotonic()
    with anyio.fail_after(within_s):
        while await greeting(kubectl, namespace) != want:
            await anyio.sleep(0.2)
    return time.monotonic() - began


async def controller_pods(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    pods = await kubectl.json(
        "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={RELEASE}"
    )
    items: list[dict[str, Any]] = pods["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions", [])
    return pod["status"]["phase"] == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


@pytest.fixture
async def jaeger_on_node(node: Node) -> AsyncIterator[Jaeger]:
    """Jaeger with its OTLP receivers on the node address (pods export there); query on
    loopback."""
    async with start_jaeger(otlp_host=node.address) as jaeger:
        yield jaeger


def traces_of(jaeger: Jaeger, revision: str) -> list[dict[str, Any]]:
    tags = json.dumps({"vcs.ref.head.revision": revision})
    query = urllib.parse.urlencode({"service": SERVICE_NAME, "tags": tags, "limit": "20"})
    with urllib.request.urlopen(f"{jaeger.query_url}/api/traces?{query}", timeout=10) as answer:
        found: list[dict[str, Any]] = json.loads(answer.read())["data"] or []
        return found


async def push_webhook(
    cluster_ip: str,
    url: str,
    sha: str,
    *,
    target: str = "80/hooks/push",  # <port><path>
    secret: str = WEBHOOK_SECRET,
) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"repository": url, "ref": "refs/heads/main", "after": sha}).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{cluster_ip}:{target}",
            data=body,
            headers={"X-Signature": f"sha256={signature}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response,
    ):
        answer: dict[str, Any] = await response.json()
        return response.status, answer


async def test_chart_installs_serves_webhooks_heals_upgrades_and_uninstalls_leaving_objects(
    node: Node,
    kubectl: Kubectl,
    node_namespace: str,
    product_image: str,
    served: tuple[Repository, str],
    jaeger_on_node: Jaeger,
) -> None:
    namespace = node_namespace
    repository, url = served
    first = repository.commit("one")
    repository_secret = "webhook"
    await kubectl(
        "create",
        "secret",
        "generic",
        repository_secret,
        "-n",
        namespace,
        f"--from-literal=secret={WEBHOOK_SECRET}",
    )
    repository_name, tag = product_image.rsplit(":", 1)
    values: dict[str, Any] = {
        "image": {"repository": repository_name, "tag": tag, "pullPolicy": "Never"},
        "config": {
            "syncs": [
                {
                    "name": "app",
                    # A long interval: after the start, only the webhook moves the sync.
                    "source": {"url": url, "ref": "main", "path": "deploy", "interval": "1h"},
                    "targetNamespace": namespace,
                }
            ],
            "receivers": [
                {
                    "name": "push",
                    "provider": "generic-hmac",
                    "secretFile": f"/var/run/secrets/aioreconcile/{repository_secret}/secret",
                    "syncs": ["app"],
                }
            ],
        },
        "existingSecrets": [{"name": repository_secret}],
        "otel": {
            "endpoint": jaeger_on_node.otlp_http_endpoint,
            "serviceName": SERVICE_NAME,
            "resourceAttributes": "k8s.cluster.name=testenv",
        },
        # Spans leave the pod within half a second (the SDK's default batch delay is 5 s).
        "env": [{"name": "OTEL_BSP_SCHEDULE_DELAY", "value": "500"}],
        "terminationGracePeriodSeconds": 5,
        "readinessProbe": {"periodSeconds": 1, "initialDelaySeconds": 0},
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
    }

    # helm install: pods Running and Ready (helm --wait), the first commit applied.
    began = time.monotonic()
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
    installed_s = time.monotonic() - began
    (pod,) = await controller_pods(kubectl, namespace)
    assert ready(pod), pod["status"]
    assert pod["spec"]["containers"][0]["image"] == product_image
    await wait_greeting(kubectl, namespace, "one", within_s=60)
    cm = await kubectl.json("get", "configmap", "app-settings", "-n", namespace)
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "aioreconcile"
    print(f"helm install -> Ready: {installed_s:.1f} s; first commit {first[:7]} applied")

    # A signed webhook to the Service's ClusterIP applies the next commit (no poll for 1 h).
    second = repository.commit("two")
    service = await kubectl.json("get", "service", f"{DEPLOYMENT}-webhook", "-n", namespace)
    cluster_ip = service["spec"]["clusterIP"]
    status, answer = await push_webhook(cluster_ip, url, second)
    assert status == 202, answer
    assert answer["triggered"] == ["app"], answer
    pushed_s = await wait_greeting(kubectl, namespace, "two", within_s=30)
    print(f"webhook to {cluster_ip} -> commit {second[:7]} applied in {pushed_s:.2f} s")
    with anyio.fail_after(20):
        while not (traces := await anyio.to_thread.run_sync(traces_of, jaeger_on_node, second)):
            await anyio.sleep(0.3)
    (process,) = {json.dumps(p, sort_keys=True) for t in traces for p in t["processes"].values()}
    resource = {tag["key"]: tag["value"] for tag in json.loads(process)["tags"]}
    assert json.loads(process)["serviceName"] == SERVICE_NAME
    assert resource["k8s.cluster.name"] == "testenv"
    print(f"trace of {second[:7]} in Jaeger: {traces[0]['traceID']}")

    # Drift on a managed object is healed.
    await kubectl(
        "patch",
        "configmap",
        "app-settings",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"data":{"GREETING":"drifted"}}',
    )
    healed_s = await wait_greeting(kubectl, namespace, "two", within_s=30)
    print(f"drift healed in {healed_s:.2f} s")

    # From inside the pod: non-root, read-only root filesystem, the emptyDirs writable.
    checks = (
        'echo "uid=$(id -u)"; '
        "touch /probe 2>/dev/null && echo root=writable || echo root=read-only; "
        "for d in /tmp /var/cache/aioreconcile /home/aioreconcile; do "
        'touch "$d/probe" && echo "writable=$d"; done; '
        "ls /var/cache/aioreconcile/aioreconcile/git >/dev/null && echo git-cache=used"
    )
    out = (
        await kubectl("exec", "-n", namespace, pod["metadata"]["name"], "--", "bash", "-c", checks)
    ).stdout
    assert "uid=65532" in out, out
    assert "root=read-only" in out, out
    for directory in ("/tmp", "/var/cache/aioreconcile", "/home/aioreconcile"):
        assert f"writable={directory}" in out, out
    assert "git-cache=used" in out, out

    # helm upgrade with a new tag (the same image, re-tagged) rolls the pod.
    await anyio.run_process(
        node.ctr("images", "tag", "--force", product_image, f"{repository_name}:{UPGRADED_TAG}")
    )
    began = time.monotonic()
    await helm(
        node,
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--wait",
        "--timeout=180s",
        "--set",
        f"image.tag={UPGRADED_TAG}",
        "--reuse-values",
    )
    with anyio.fail_after(60):
        while True:
            pods = await controller_pods(kubectl, namespace)
            if (
                [p["metadata"]["name"] for p in pods] != [pod["metadata"]["name"]]
                and all(ready(p) for p in pods)
                and len(pods) == 1
            ):
                break
            await anyio.sleep(0.5)
    (rolled,) = pods
    assert rolled["spec"]["containers"][0]["image"] == f"{repository_name}:{UPGRADED_TAG}"
    print(f"helm upgrade -> new pod Ready: {time.monotonic() - began:.1f} s")
    # The new pod works: it heals a drift too.
    await kubectl(
        "patch",
        "configmap",
        "app-settings",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"data":{"GREETING":"drifted-again"}}',
    )
    await wait_greeting(kubectl, namespace, "two", within_s=60)

    # helm uninstall: the controller goes; the CRDs and what it applied stay.
    await helm(node, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout=120s")
    assert await controller_pods(kubectl, namespace) == []
    gone = await kubectl("get", "deployment", DEPLOYMENT, "-n", namespace, check=False)
    assert gone.returncode != 0
    gone = await kubectl("get", "clusterrole", DEPLOYMENT, check=False)
    assert gone.returncode != 0
    for crd in ("syncs.aioreconcile.dev", "receivers.aioreconcile.dev"):
        await kubectl("get", "crd", crd)
    assert await greeting(kubectl, namespace) == "two"
    inventory = await kubectl("get", "configmap", "aioreconcile-inventory-app", "-n", namespace)
    assert "aioreconcile-inventory-app" in inventory.stdout
