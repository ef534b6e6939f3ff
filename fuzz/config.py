"""Fuzz the controller's configuration: the ``run --config`` file, and the Sync and Receiver
custom resources (CRD mode), which go through the same field rules.

Run: ``python -m fuzz.config -runs=100000`` or ``-max_total_time=300``.

An input's first line says which reader gets the rest: ``file`` (``parse_config``), or
``sync`` / ``receiver``: a YAML document that becomes the ``spec`` of a Sync or Receiver object
(``resources.sync_from_resource`` / ``receiver_from_resource``); its metadata is a valid one,
as the API server guarantees. Helm values are part of a sync's ``render.values``.

What must hold: each returns a spec or raises ``ConfigError`` naming the file or the object
and the field, and quoting no credential (the seeds carry tokens in URLs and auth fields).
"""

from collections.abc import Iterator
from typing import Any

import yaml

from aioreconcile.engine.configuration import ConfigError, parse_config
from aioreconcile.engine.resources import (
    receiver_from_resource,
    sync_from_resource,
)
from fuzz.harness import PLANTED, check_error, planted_as_credential, run

ORIGIN = "config.yaml"
NAMESPACE, NAME = "team", "shop"


def _resource(kind: str, spec: object) -> dict[str, Any]:
    return {
        "apiVersion": "aioreconcile.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": NAME, "namespace": NAMESPACE, "generation": 2},
        "spec": spec,
    }


def exercise(mode: str, text: str) -> None:
    try:
        if mode in ("sync", "receiver"):
            try:
                spec = yaml.safe_load(text)
            except (yaml.YAMLError, RecursionError):
                return  # the API server only ever hands over JSON it decoded
            if mode == "sync":
                sync_from_resource(_resource("Sync", spec))
            else:
                receiver_from_resource(_resource("Receiver", spec), token=PLANTED)
            return
        parse_config(text, origin=ORIGIN)
    except ConfigError as e:
        check_error(e, names=(ORIGIN, f"{NAMESPACE}/{NAME}"), planted=planted_as_credential(text))


def test_one_input(data: bytes) -> None:
    mode, _, rest = data.partition(b"\n")
    exercise(mode.decode("latin-1").strip(), rest.decode("utf-8", "replace"))


_FILE = f"""\
syncs:
  - name: shop
    source:
      url: https://bot:{PLANTED}@git.example.com/org/shop.git?private_token={PLANTED}
      ref: release
      path: deploy/prod
      interval: 1m30s
      timeout: 20s
      auth: {{username: bot, passwordEnv: SHOP_TOKEN}}
      verify: {{mode: ssh, allowedSignersFile: /etc/aioreconcile/allowed_signers}}
    render:
      type: helm
      releaseName: shop
      values: {{replicas: 3, image: {{tag: v2}}, env: [{{name: A, value: b}}]}}
      valuesFiles: [values-prod.yaml]
    targetNamespace: shop
    serviceAccount: shop/deployer
    labels: {{team: shop, tier: web}}
    prune: false
    selfHeal: false
    wait: true
    waitTimeout: 5m
  - name: infra
    source:
      url: git@git.example.com:org/infra.git
      auth: {{sshKeyFile: /keys/id, knownHostsFile: /keys/known_hosts}}
receivers:
  - name: github
    provider: github
    secretEnv: GITHUB_WEBHOOK_SECRET
    maxBodyBytes: 1048576
    syncs: [infra]
    selector:
      matchLabels: {{team: shop}}
  - name: lab
    provider: gitlab
    secretFile: /secrets/lab
    syncs: [shop]
"""
_SYNC = """\
source:
  url: https://git.example.com/org/shop.git
  ref: main
  path: deploy
  interval: 5m
  secretRef: {name: git-auth}
  verify: {mode: gpg, secretRef: {name: keys}}
render: {type: kustomize}
targetNamespace: shop
serviceAccountName: deployer
prune: true
dependsOn: [{name: infra}, {name: crds, namespace: platform}]
"""
_RECEIVER = """\
provider: bitbucket-server
secretRef: {name: hook}
syncs: [shop, infra]
selector: {matchLabels: {team: shop}}
maxBodyBytes: 65536
"""


def seeds() -> Iterator[bytes]:
    yield b"file\n" + _FILE.encode()
    yield b"sync\n" + _SYNC.encode()
    yield b"receiver\n" + _RECEIVER.encode()
    from tests.engine.test_configuration import FULL  # the tests' complete example

    yield b"file\n" + FULL.encode()


if __name__ == "__main__":
    run("config", test_one_input, seeds())
