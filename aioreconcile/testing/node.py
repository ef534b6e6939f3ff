"""A real Kubernetes node on this machine, layered on the test control plane.

``start_node()`` starts etcd + kube-apiserver set up for pods (``start_control_plane(node_address=
...)``), then containerd (root, state and socket under the node's directory; the CRI config that
works on these VMs), kube-controller-manager, kube-scheduler, kube-proxy (iptables) and kubelet,
and waits until the Node is Ready and namespaces get their ``default`` ServiceAccount. Pods run
for real (runc), from images imported into containerd: the local pause image and the Debian
base image (``aioreconcile.testing.images``); nothing is pulled, pods use
``imagePullPolicy: Never``.

Pods get a bridge (``cni0``) on a private subnet with routes only to the pod subnet, the Service
range and this machine's address, no default route, no masquerade, and a FORWARD rule that drops
whatever they send anywhere else: they reach the apiserver through the ``kubernetes`` Service
and nothing outside this machine.

On exit every process stops (pods are SIGKILLed through their cgroups, containerd's shims are
killed), kubelet's and containerd's mounts are unmounted, and what the node added to the host
(iptables rules and chains, the bridge, ``/var/lib/cni``, ``/var/log/containers``, cgroups) is
removed: :mod:`aioreconcile.testing.hoststate` compares against a snapshot taken before the start.

What had to be found by trying on these machines (``restrict_oom_score_adj``, ``failCgroupV1``,
the InternalIP address type) is in docs/testenv.md. The layout of the components follows
kubeadm's and kind's single-node clusters.
"""

import contextlib
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import yaml

from aioreconcile.testing import hoststate
from aioreconcile.testing.controlplane import ControlPlane, free_port, http_ok, start_control_plane
from aioreconcile.testing.images import (
    PAUSE_IMAGE,
    base_image_archive,
    base_image_reference,
    pause_image_archive,
)
from aioreconcile.testing.processes import ManagedProcess, StartupError
from aioreconcile.testing.toolchain import NODE_COMPONENTS, require

NODE_NAME: Final = "aioreconcile-testenv-node"
POD_SUBNET: Final = "10.88.0.0/16"
SERVICE_RANGE: Final = "10.96.0.0/12"  # the control plane's --service-cluster-ip-range
BRIDGE: Final = "cni0"
NETWORK_NAME: Final = "aioreconcile-testenv"
KUBELET_PORT: Final = 10250
# Where kubelet, containerd and the CNI plugins write outside the node's directory, whatever
# their configuration says (libcni's cache, kubelet's container log links, containerd's shim
# sockets); only what appears there during the node's life is removed.
HOST_PATHS: Final = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    Path("/var/lib/cni"),
    Path("/run/netns"),
    Path("/run/containerd"),
    Path("/etc/cni"),
    Path("/opt/cni"),
    Path("/usr/libexec/kubernetes"),
)
LOCK_FILE: Final = Path("/run/lock/aioreconcile-testenv-node.lock")
REQUIRED_TOOLS: Final = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip")
_FORWARD_GUARD: Final = (
    "FORWARD",
    "-i",
    BRIDGE,
    "!",
    "-o",
    BRIDGE,
    "-m",
    "comment",
    "--comment",
    "aioreconcile-testenv: pods reach nothing outside this machine",
    "-j",
    "DROP",
)
_DOCKER_USER: Final = ("DOCKER-USER", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")


class NodeError(Exception):
    """The node cannot run on this machine (not root, a Debian package missing, another node)."""


def machine_address() -> str:
    """This machine's IPv4 address: the one on the interface of the default route, else the
    first global address that is not a bridge of ours or docker's."""
    default_interface = None
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 0x2:
            default_interface = fields[0]
            break
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    candidates: list[tuple[str, str]] = []
    for link in json.loads(out):
        for info in link.get("addr_info", []):
            if info.get("scope") == "global" and link["ifname"] not in (BRIDGE, "docker0"):
                candidates.append((link["ifname"], info["local"]))
    for interface, address in candidates:
        if interface == default_interface:
            return address
    if candidates:
        return candidates[0][1]
    raise NodeError("this machine has no global IPv4 address for the apiserver to advertise")


@dataclass
class Node:
    """A running node: its control plane, containerd socket, and how to reach its images."""

    name: str
    address: str
    workdir: Path
    control_plane: ControlPlane
    containerd_socket: Path
    processes: dict[str, ManagedProcess]
    base_image: str | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def ctr(self, *args: str) -> list[str]:
        """argv of ``ctr`` against this node's containerd, in the CRI namespace (k8s.io)."""
        return ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]

    async def import_image(self, archive: Path) -> None:
        """Import an image archive (OCI layout or ``docker save``) for the kubelet to use."""
        result = await anyio.run_process(self.ctr("images", "import", str(archive)), check=False)
        if result.returncode != 0:
            raise StartupError(f"ctr images import {archive}: {result.stderr.decode().strip()}")

    async def images(self) -> list[str]:
        result = await anyio.run_process(self.ctr("images", "list", "--quiet"))
        return result.stdout.decode().split()

    async def get(self, path: str) -> Any:
        """GET ``path`` from the apiserver as the admin; None when it does not exist (404)."""
        context = self.control_plane.ssl_context()
        url = f"{self.control_plane.server}{path}"

        def fetch() -> Any:
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as response:
                    return json.load(response)
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                raise

        return await anyio.to_thread.run_sync(fetch)

    async def ready(self) -> bool:
        node = await self.get(f"/api/v1/nodes/{self.name}")
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    async def wait_service_account(self, namespace: str, *, limit_s: float = 30.0) -> float:
        """Wait until kube-controller-manager gave ``namespace`` its ``default`` ServiceAccount
        and ``kube-root-ca.crt``: before that, the ServiceAccount admission refuses Pods."""
        began = time.monotonic()
        paths = (
            f"/api/v1/namespaces/{namespace}/serviceaccounts/default",
            f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt",
        )
        while True:
            found = [await self.get(p) for p in paths]
            if all(found):
                return time.monotonic() - began
            if time.monotonic() - began > limit_s:
                raise StartupError(
                    f"no default ServiceAccount / kube-root-ca.crt in {namespace} after "
                    f"{limit_s:.0f} s; kube-controller-manager log:\n"
                    f"{self.processes['kube-controller-manager'].log_tail()}"
                )
            await anyio.sleep(0.1)


def _check_machine() -> None:
    if os.geteuid() != 0:
        raise NodeError("a real node needs root (kubelet, containerd, iptables, mounts)")
    absent = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if absent:
        raise NodeError(
            f"missing on PATH: {', '.join(absent)}; install the Debian packages: "
            "apt-get install -y containerd runc iptables"
        )


@contextlib.contextmanager
def _machine_lock() -> Any:
    """One node per machine: kubelet's port, the bridge and the host paths are shared."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise NodeError(
                f"another node runs on this machine (pid {handle.read().strip() or '?'} holds "
                f"{LOCK_FILE}); stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def containerd_config(root: Path, *, cni_bin_dir: Path, cni_conf_dir: Path) -> str:
    """containerd 1.6's config: everything under ``root``, the CRI settings these VMs need."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{root / "containerd.sock"}"

[ttrpc]
  address = "{root / "containerd.sock.ttrpc"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # The VM lacks CAP_SYS_RESOURCE: nothing may lower oom_score_adj. kubelet asks -998 for every
  # sandbox; without this every pod fails with runc's "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{root / "runc"}"

[{cri}.cni]
  bin_dir = "{cni_bin_dir}"
  conf_dir = "{cni_conf_dir}"
"""


def cni_conflist(*, node_address: str, ipam_dir: Path) -> dict[str, Any]:
    """A bridge on the pod subnet; routes to the Service range and this machine only.

    No default route and ``ipMasq: false``: pods reach nothing outside this machine. The pod
    subnet itself needs no route (it is the interface's own network).
    """
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": SERVICE_RANGE}, {"dst": f"{node_address}/32"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    *, workdir: Path, containerd_socket: Path, node_address: str, ca_cert: Path
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # v1.35+ refuses cgroup v1 unless told; these VMs are cgroup v1.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{containerd_socket}",
        "failSwapOn": False,
        # The apiserver reaches kubelet (logs, exec) at the node's InternalIP.
        "address": node_address,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        # The shared disk may be nearly full; a test node must not evict its pods for that.
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        # Imported images cannot be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "podLogsDirectory": str(workdir / "pod-logs"),
        "volumePluginDir": str(workdir / "volume-plugins"),
        "serializeImagePulls": False,
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "10s",
    }


def kube_proxy_config(*, kubeconfig: Path, node_address: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_SUBNET,
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        "nodePortAddresses": [f"{node_address}/32"],
        # 0 = leave the machine's conntrack sysctls alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        # true would set net.ipv4.conf.all.route_localnet on the host.
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
    }


async def _iptables(*argv: str) -> None:
    result = await anyio.run_process(["iptables", "-w", *argv], check=False)
    if result.returncode != 0:
        raise StartupError(f"iptables {' '.join(argv)}: {result.stderr.decode().strip()}")


async def _chain_exists(table: str, chain: str) -> bool:
    result = await anyio.run_process(["iptables", "-w", "-t", table, "-S", chain], check=False)
    return result.returncode == 0


async def _stop_all(processes: Sequence[ManagedProcess]) -> None:
    async with anyio.create_task_group() as tasks:
        for process in processes:
            tasks.start_soon(process.stop)


@asynccontextmanager
async def start_node(
    workdir: Path | None = None,
    *,
    base_image: bool = True,
    startup_timeout: float = 90.0,
) -> AsyncIterator[Node]:
    """Start a control plane and a real node on it; stop everything and clean the host on exit.

    ``base_image``: import the Debian base image (made by debootstrap once per machine) so pods
    can run ``images.base_image_reference()``. With ``workdir`` the logs and configs are kept.
    """
    _check_machine()
    binaries = {c: require(c) for c in NODE_COMPONENTS if c != "kubectl"}
    pause_archive = await anyio.to_thread.run_sync(pause_image_archive)
    base_archive = await anyio.to_thread.run_sync(base_image_archive) if base_image else None
    keep = workdir is not None
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="aioreconcile-node-"))
    root.mkdir(parents=True, exist_ok=True)
    address = machine_address()
    with _machine_lock():
        snapshot = hoststate.HostSnapshot.take(HOST_PATHS)
        node: Node | None = None
        try:
            async with AsyncExitStack() as stack:
                node = await _start(
                    stack,
                    root,
                    address=address,
                    binaries=binaries,
                    images=[pause_archive, *([base_archive] if base_archive else [])],
                    base_image=base_image_reference() if base_archive else None,
                    startup_timeout=startup_timeout,
                    snapshot=snapshot,
                )
                yield node
        finally:
            with anyio.CancelScope(shield=True):
                problems = await anyio.to_thread.run_sync(
                    lambda: hoststate.restore(snapshot, under=root)
                )
                if not keep:
                    shutil.rmtree(root, ignore_errors=True)
            if problems:
                raise StartupError("the node's cleanup left:\n" + "\n".join(problems))


async def _start(
    stack: AsyncExitStack,
    root: Path,
    *,
    address: str,
    binaries: dict[str, Path],
    images: list[Path],
    base_image: str | None,
    startup_timeout: float,
    snapshot: hoststate.HostSnapshot,
) -> Node:
    began = time.monotonic()
    plane = await stack.enter_async_context(
        start_control_plane(
            root / "control-plane", startup_timeout=startup_timeout, node_address=address
        )
    )
    processes: dict[str, ManagedProcess] = {}

    async def stop_node() -> None:
        with anyio.CancelScope(shield=True):
            await _stop_all(
                [
                    processes[n]
                    for n in ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager")
                    if n in processes
                ]
            )
            await anyio.to_thread.run_sync(hoststate.kill_pods, snapshot)
            if "containerd" in processes:
                await processes["containerd"].stop()
            # containerd's shims outlive it by design (they hold the containers); ours go too.
            shims = hoststate.processes_mentioning(str(root / "containerd"))
            hoststate.kill_pids(set(shims))
            for process in processes.values():
                process.kill_now()

    stack.push_async_callback(stop_node)

    containerd_dir = root / "containerd"
    containerd_dir.mkdir(parents=True, exist_ok=True)
    cni_conf_dir = root / "cni" / "net.d"
    cni_conf_dir.mkdir(parents=True, exist_ok=True)
    (cni_conf_dir / "10-aioreconcile-testenv.conflist").write_text(
        json.dumps(cni_conflist(node_address=address, ipam_dir=root / "cni" / "ipam"), indent=2)
    )
    config = containerd_dir / "config.toml"
    config.write_text(
        containerd_config(
            containerd_dir,
            cni_bin_dir=binaries["cni-plugins"].parent,
            cni_conf_dir=cni_conf_dir,
        )
    )
    socket = containerd_dir / "containerd.sock"
    containerd = processes["containerd"] = ManagedProcess(
        "containerd",
        ["containerd", "--config", str(config), "--log-level", "warn"],
        log_path=root / "containerd.log",
    )
    containerd.start()

    async def containerd_up() -> bool:
        if not socket.exists():
            return False
        result = await anyio.run_process(["ctr", "--address", str(socket), "version"], check=False)
        return result.returncode == 0

    node = Node(
        name=NODE_NAME,
        address=address,
        workdir=root,
        control_plane=plane,
        containerd_socket=socket,
        processes=processes,
        base_image=base_image,
    )
    node.timings["control_plane_ready_s"] = time.monotonic() - began
    node.timings["containerd_ready_s"] = await containerd.wait_ready(
        containerd_up, timeout=startup_timeout, what="serving (ctr version)"
    )
    imported = time.monotonic()
    for archive in images:
        await node.import_image(archive)
    node.timings["images_imported_s"] = time.monotonic() - imported

    # Pods may talk to each other on the bridge and to this machine, never beyond it.
    await _iptables("-I", *_FORWARD_GUARD)
    if await _chain_exists("filter", "DOCKER-USER"):
        # dockerd sets FORWARD's policy to DROP, which would drop pod <-> pod on the bridge.
        await _iptables("-I", *_DOCKER_USER)

    kubeconfig = plane.kubeconfig
    pki = plane.pki
    kubelet_dir = root / "kubelet"
    kubelet_dir.mkdir(parents=True, exist_ok=True)
    kubelet_file = root / "kubelet-config.yaml"
    kubelet_file.write_text(
        yaml.safe_dump(
            kubelet_config(
                workdir=root,
                containerd_socket=socket,
                node_address=address,
                ca_cert=pki.ca_cert,
            )
        )
    )
    proxy_file = root / "kube-proxy-config.yaml"
    proxy_config = kube_proxy_config(kubeconfig=kubeconfig, node_address=address)
    proxy_file.write_text(yaml.safe_dump(proxy_config))
    controller_port, scheduler_port = free_port(), free_port()
    component_auth = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
    ]
    argvs = {
        "kube-controller-manager": [
            str(binaries["kube-controller-manager"]),
            *component_auth,
            f"--secure-port={controller_port}",
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--cluster-name=aioreconcile-testenv",
            "--controllers=*",
            "--v=1",
        ],
        "kube-scheduler": [
            str(binaries["kube-scheduler"]),
            *component_auth,
            f"--secure-port={scheduler_port}",
            "--v=1",
        ],
        "kube-proxy": [str(binaries["kube-proxy"]), f"--config={proxy_file}", "--v=1"],
        "kubelet": [
            str(binaries["kubelet"]),
            f"--config={kubelet_file}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={kubelet_dir}",
            f"--cert-dir={kubelet_dir / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={address}",
            "--v=1",
        ],
    }
    for name, argv in argvs.items():
        processes[name] = ManagedProcess(name, argv, log_path=root / f"{name}.log")
        processes[name].start()
    kubelet_started = time.monotonic()
    node.timings["node_ready_s"] = await processes["kubelet"].wait_ready(
        node.ready, timeout=startup_timeout, what="Ready (the Node's Ready condition)"
    )
    unverified = ssl._create_unverified_context()  # the components' self-signed serving certs
    await processes["kube-scheduler"].wait_ready(
        lambda: http_ok(f"https://127.0.0.1:{scheduler_port}/healthz", unverified),
        timeout=startup_timeout,
        what="healthy (/healthz)",
    )
    await processes["kube-proxy"].wait_ready(
        lambda: http_ok(f"http://{proxy_config['healthzBindAddress']}/healthz"),
        timeout=startup_timeout,
        what="healthy (/healthz)",
    )
    node.timings["service_account_ready_s"] = await node.wait_service_account("default")
    node.timings["all_ready_after_kubelet_s"] = time.monotonic() - kubelet_started
    node.timings["total_s"] = time.monotonic() - began
    return node
