"""Stopping the node (or the test dockerd) leaves the machine as it found it: no process,
mount, bridge, file or iptables rule of the node's survives (compared with snapshots taken
before it started).

It starts its own node, so it must not run while the session's ``node`` fixture holds the
machine: pytest runs this module first (files run in name order)."""

import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aioreconcile.testing import hoststate
from aioreconcile.testing.docker import start_docker
from aioreconcile.testing.images import base_image_archive, base_image_reference
from aioreconcile.testing.node import BRIDGE, HOST_PATHS, NODE_NAME, start_node
from aioreconcile.testing.toolchain import require
from tests.node.conftest import Kubectl, sleeping_pod

pytestmark = pytest.mark.node

FAMILIES = ("iptables", "ip6tables")
# Where dockerd and its own containerd write outside their directories (seen on these machines).
DOCKER_PATHS = (
    Path("/run/docker"),
    Path("/etc/docker"),
    Path("/var/lib/docker"),
    Path("/run/containerd"),
)


def _listing(path: Path) -> set[str] | None:
    """Every entry under ``path``, at any depth (containerd's shim sockets are in .../s/)."""
    return hoststate.tree(path)


@pytest.fixture
def shim_socket_dir() -> Iterator[Path]:
    """/run/containerd/s as a dockerd that ran before leaves it: then only the node's own shim
    sockets inside it must go (the comparisons are at every depth)."""
    sockets = Path("/run/containerd/s")
    made_here = not sockets.exists()
    sockets.mkdir(parents=True, exist_ok=True)
    yield sockets
    if made_here:
        shutil.rmtree(sockets.parent, ignore_errors=True)


async def test_stopping_the_node_leaves_no_process_mount_bridge_file_or_iptables_rule(
    shim_socket_dir: Path,
) -> None:
    iptables_before = {f: hoststate.comparable(hoststate.iptables_rules(f)) for f in FAMILIES}
    mounts_before = Counter(hoststate.mount_points())
    links_before = hoststate.link_names()
    paths_before = {path: _listing(path) for path in HOST_PATHS}
    cgroups_before = hoststate.kubepods_cgroups()

    async with start_node() as node:
        workdir = node.workdir
        kubectl = Kubectl(node)
        assert node.base_image
        await kubectl.apply("default", sleeping_pod("resident", node.base_image))
        await kubectl.wait_running("default", "resident")
        # The node did change the machine, so the comparisons below are not vacuous.
        assert BRIDGE in hoststate.link_names()
        assert hoststate.comparable(hoststate.iptables_rules()) != iptables_before["iptables"]
        assert Counter(hoststate.mount_points()) != mounts_before
        pods = set().union(*(hoststate.cgroup_pids(c) for c in hoststate.kubepods_cgroups()))
        assert pods, "the pod's processes are in kubelet's cgroups"
        assert hoststate.processes_mentioning(str(workdir))

    assert hoststate.processes_mentioning(str(workdir)) == {}
    assert hoststate.alive(pods) == set(), "a pod's process survived"
    assert hoststate.kubepods_cgroups() == cgroups_before
    assert Counter(hoststate.mount_points()) == mounts_before
    assert hoststate.link_names() == links_before
    assert {path: _listing(path) for path in HOST_PATHS} == paths_before
    assert {f: hoststate.comparable(hoststate.iptables_rules(f)) for f in FAMILIES} == (
        iptables_before
    )
    assert not workdir.exists()


async def test_stopping_the_test_dockerd_leaves_no_process_mount_or_file(tmp_path: Path) -> None:
    mounts_before = Counter(hoststate.mount_points())
    paths_before = {path: _listing(path) for path in DOCKER_PATHS}
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image_reference()}\nRUN date > /built\n")
    async with start_docker() as docker:
        # A build with a RUN step: its container's shim leaves /run/containerd/s behind.
        if not await docker.has_image(base_image_reference()):
            await docker.load(await anyio.to_thread.run_sync(base_image_archive))
        await docker.build(tmp_path, tag="localhost/aioreconcile-testenv/cleanup:test")
        await docker.run("rmi", "localhost/aioreconcile-testenv/cleanup:test")
        started = docker.env.get("DOCKER_HOST", "")
    assert Counter(hoststate.mount_points()) == mounts_before
    assert {path: _listing(path) for path in DOCKER_PATHS} == paths_before
    if started:  # ours (unix://<dir>/docker.sock): nothing mentions its directory any more
        assert hoststate.processes_mentioning(started.removeprefix("unix://")) == {}


def test_testenv_up_node_serves_a_ready_node_and_sigterm_cleans_up(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "aioreconcile", "testenv", "up", "--node", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        line = process.stdout.readline()  # the first export comes once everything is ready
        assert line.startswith("export KUBECONFIG="), process.communicate(timeout=30)[1]
        kubeconfig = line.strip().partition("=")[2]
        nodes = subprocess.run(
            [str(require("kubectl")), f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        [listed] = json.loads(nodes.stdout)["items"]
        ready = [c for c in listed["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True"
        assert hoststate.processes_mentioning(str(tmp_path))
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert f"node {NODE_NAME} Ready" in err
    assert hoststate.processes_mentioning(str(tmp_path)) == {}
    assert BRIDGE not in hoststate.link_names()


async def test_with_dockers_forward_chain_present_bridge_traffic_is_accepted_then_unwound() -> None:
    """dockerd's FORWARD DROP policy would cut pod <-> pod traffic; where its DOCKER-USER chain
    exists the node accepts cni0 <-> cni0 there, and takes the rule away again on stop. (A chain
    made by the test stands in for a dockerd started with iptables.)"""
    exists = await anyio.run_process(["iptables", "-w", "-S", "DOCKER-USER"], check=False)
    made_here = exists.returncode != 0
    if made_here:
        await anyio.run_process(["iptables", "-w", "-N", "DOCKER-USER"])
    try:
        before = hoststate.comparable(hoststate.iptables_rules())
        async with start_node(base_image=False):
            rules = hoststate.iptables_rules()["filter"].rules
            assert "-A DOCKER-USER -i cni0 -o cni0 -j ACCEPT" in rules
        assert hoststate.comparable(hoststate.iptables_rules()) == before
    finally:
        if made_here:
            await anyio.run_process(["iptables", "-w", "-X", "DOCKER-USER"])
