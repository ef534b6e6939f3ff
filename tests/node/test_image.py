"""The product image (top-level Dockerfile), built with docker on the local Debian base and run
as a pod: non-root, read-only root filesystem, git/helm/kubectl inside, `aioreconcile run` as
its entrypoint, OCI labels for version, revision and source."""

import json

import pytest

import aioreconcile
from aioreconcile.testing.docker import Docker, source_labels
from aioreconcile.testing.toolchain import pinned_versions
from tests.node.conftest import Kubectl

pytestmark = pytest.mark.node

CONFIG = """\
syncs:
  - name: demo
    source:
      url: https://git.example.com/acme/deploy.git
      ref: main
      path: clusters/test
"""

CHECKS = """\
set -u
echo "uid=$(id -u) gid=$(id -g)"
aioreconcile --version
aioreconcile check-config /etc/aioreconcile/config.yaml
touch /probe 2>/tmp/err && echo "root=writable" || echo "root=read-only: $(cat /tmp/err)"
for dir in "$HOME" /tmp "$XDG_CACHE_HOME"; do touch "$dir/probe" && echo "writable=$dir"; done
git --version
helm version --short
kubectl version --client -o json
"""


async def test_image_labels_and_entrypoint(docker: Docker, product_image: str) -> None:
    labels = await docker.labels(product_image)
    assert labels["org.opencontainers.image.version"] == aioreconcile.__version__
    assert labels["org.opencontainers.image.revision"] == source_labels()["REVISION"]
    assert labels["org.opencontainers.image.source"] == source_labels()["SOURCE"]
    inspected = await docker.run("image", "inspect", "--format", "{{json .Config}}", product_image)
    config = json.loads(inspected.stdout)
    assert config["Entrypoint"] == ["aioreconcile", "run"]
    assert config["User"] == "65532:65532"


async def test_image_runs_as_non_root_with_a_read_only_root_filesystem(
    kubectl: Kubectl, node_namespace: str, product_image: str
) -> None:
    await kubectl(
        "create",
        "configmap",
        "aioreconcile",
        "-n",
        node_namespace,
        "--from-literal",
        f"config.yaml={CONFIG}",
    )
    writable = {"home": "/home/aioreconcile", "tmp": "/tmp", "cache": "/var/cache/aioreconcile"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "controller"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": product_image,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "infinity"],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        *({"name": n, "mountPath": p} for n, p in writable.items()),
                        {"name": "config", "mountPath": "/etc/aioreconcile", "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                *({"name": n, "emptyDir": {}} for n in writable),
                {"name": "config", "configMap": {"name": "aioreconcile"}},
            ],
        },
    }
    await kubectl.apply(node_namespace, pod)
    await kubectl.wait_running(node_namespace, "controller")
    result = await kubectl("exec", "-n", node_namespace, "controller", "--", "bash", "-c", CHECKS)
    out = result.stdout
    print(out)
    assert "uid=65532 gid=65532" in out
    assert f"aioreconcile {aioreconcile.__version__}" in out
    assert "sync demo: https://git.example.com/acme/deploy.git main clusters/test" in out
    assert "root=read-only: touch: cannot touch '/probe': Read-only file system" in out
    for path in writable.values():
        assert f"writable={path}" in out
    assert "git version 2." in out
    assert pinned_versions()["helm"] in out  # helm version --short
    assert f'"gitVersion": "{pinned_versions()["kube-apiserver"]}"' in out  # kubectl
