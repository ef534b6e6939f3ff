"""Pods run for real on the test node: Deployments roll out, pods reach the apiserver through
the ``kubernetes`` Service with their token, logs are served, and pods reach nothing else."""

import ipaddress
import json
import socket
import struct
from pathlib import Path

import anyio
import pytest

from aioreconcile.testing.node import POD_SUBNET, SERVICE_RANGE, Node
from aioreconcile.testing.toolchain import require
from tests.node.conftest import Kubectl, sleeping_pod

pytestmark = pytest.mark.node

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def _base_image(node: Node) -> str:
    assert node.base_image, "the node fixture imports the Debian base image"
    return node.base_image


async def test_node_is_ready_within_25_seconds_of_kubelet_start(node: Node) -> None:
    print(f"node timings: {json.dumps({k: round(v, 2) for k, v in node.timings.items()})}")
    assert node.timings["node_ready_s"] < 25
    assert await node.ready()


async def test_deployment_of_two_replicas_rolls_out_and_its_service_gets_both_endpoints(
    node: Node, kubectl: Kubectl, node_namespace: str
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "sleeper"}},
            "template": {
                "metadata": {"labels": {"app": "sleeper"}},
                "spec": sleeping_pod("unused", _base_image(node))["spec"],
            },
        },
    }
    await kubectl.apply(node_namespace, deployment)
    await kubectl("rollout", "status", "-n", node_namespace, "deployment/sleeper", "--timeout=90s")
    pods = await kubectl.json("get", "pods", "-n", node_namespace, "-l", "app=sleeper")
    assert [p["status"]["phase"] for p in pods["items"]] == ["Running", "Running"]
    assert {p["spec"]["nodeName"] for p in pods["items"]} == {node.name}
    addresses = [ipaddress.ip_address(p["status"]["podIP"]) for p in pods["items"]]
    assert all(a in ipaddress.ip_network(POD_SUBNET) for a in addresses)

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sleeper"},
        "spec": {"selector": {"app": "sleeper"}, "ports": [{"port": 80}]},
    }
    await kubectl.apply(node_namespace, service)
    # kube-controller-manager's EndpointSlice controller: both pods, by address.
    for _ in range(100):
        slices = await kubectl.json(
            "get",
            "endpointslices",
            "-n",
            node_namespace,
            "-l",
            "kubernetes.io/service-name=sleeper",
        )
        found = {
            ipaddress.ip_address(a)
            for item in slices["items"]
            for endpoint in item.get("endpoints") or []
            for a in endpoint["addresses"]
        }
        if found == set(addresses):
            break
        await anyio.sleep(0.1)
    assert found == set(addresses)


async def test_pod_reaches_the_apiserver_at_the_kubernetes_service_with_its_token(
    node: Node, kubectl: Kubectl, node_namespace: str
) -> None:
    """kubectl (the cluster's own, mounted read-only from the testenv cache) inside the pod
    calls https://10.96.0.1:443 with the mounted token and CA: kube-proxy's DNAT to the
    advertised address, TLS to the apiserver, token authentication all real."""
    binary = require("kubectl")
    pod = sleeping_pod("caller", _base_image(node))
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "kubectl", "mountPath": "/opt/kubectl", "readOnly": True}
    ]
    pod["spec"]["volumes"] = [
        {"name": "kubectl", "hostPath": {"path": str(binary.parent), "type": "Directory"}}
    ]
    await kubectl.apply(node_namespace, pod)
    await kubectl.wait_running(node_namespace, "caller")
    script = (
        f"/opt/kubectl/kubectl --server=https://10.96.0.1:443 "
        f"--certificate-authority={SERVICE_ACCOUNT}/ca.crt "
        f'--token="$(cat {SERVICE_ACCOUNT}/token)" auth whoami -o json'
    )
    result = await kubectl("exec", "-n", node_namespace, "caller", "--", "bash", "-c", script)
    review = json.loads(result.stdout)
    assert review["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{node_namespace}:default"
    )


async def test_kubectl_logs_returns_what_the_container_printed(
    node: Node, kubectl: Kubectl, node_namespace: str
) -> None:
    pod = sleeping_pod(
        "talker",
        _base_image(node),
        command=["bash", "-c", "echo hello from $(hostname); exec sleep infinity"],
    )
    await kubectl.apply(node_namespace, pod)
    await kubectl.wait_running(node_namespace, "talker")
    logs = await kubectl("logs", "-n", node_namespace, "talker")
    assert logs.stdout.strip() == "hello from talker"


def _routes(proc_net_route: str) -> list[tuple[str, ipaddress.IPv4Network]]:
    """(interface, destination network) per line of /proc/net/route (little-endian hex)."""
    routes = []
    for line in proc_net_route.splitlines()[1:]:
        fields = line.split()
        destination = socket.inet_ntoa(struct.pack("<L", int(fields[1], 16)))
        mask = socket.inet_ntoa(struct.pack("<L", int(fields[7], 16)))
        routes.append((fields[0], ipaddress.IPv4Network(f"{destination}/{mask}")))
    return routes


def _host_gateway() -> str:
    """This machine's default gateway: an address outside it that the machine itself reaches."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000" and fields[7] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    raise AssertionError("this machine has no default route")


async def test_pod_has_no_default_route_and_cannot_reach_outside_the_machine(
    node: Node, kubectl: Kubectl, node_namespace: str
) -> None:
    await kubectl.apply(node_namespace, sleeping_pod("prisoner", _base_image(node)))
    await kubectl.wait_running(node_namespace, "prisoner")
    table = await kubectl("exec", "-n", node_namespace, "prisoner", "--", "cat", "/proc/net/route")
    destinations = {network for _, network in _routes(table.stdout)}
    assert destinations == {
        ipaddress.ip_network(POD_SUBNET),
        ipaddress.ip_network(SERVICE_RANGE),
        ipaddress.ip_network(f"{node.address}/32"),
    }
    # The machine's own gateway: no route, so the kernel refuses before any packet leaves.
    attempt = await kubectl(
        "exec",
        "-n",
        node_namespace,
        "prisoner",
        "--",
        "bash",
        "-c",
        f"exec 3<>/dev/tcp/{_host_gateway()}/80",
        check=False,
    )
    assert attempt.returncode != 0
    assert "Network is unreachable" in attempt.stderr
