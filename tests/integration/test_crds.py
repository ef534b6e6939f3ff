"""The Sync and Receiver CRDs as a person meets them through kubectl, on the real apiserver:
defaults filled in, bad objects refused with the field named, printer columns, `kubectl wait`.

The controller does not act on these resources yet; the tests write status themselves, through
the status subresource, as the controller will.
"""

import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from aioreconcile.engine.receivers import webhook_path
from aioreconcile.testing.pytest_plugin import Kube

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "charts" / "aioreconcile" / "crds"
API_VERSION = "aioreconcile.dev/v1alpha1"
SHA = "0123456789abcdef0123456789abcdef01234567"


async def _kubectl(
    kube: Kube, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(
        ["kubectl", "--kubeconfig", str(kube.kubeconfig), *args],
        input=stdin.encode() if stdin is not None else None,
        check=False,
    )


async def _ok(kube: Kube, *args: str, stdin: str | None = None) -> str:
    done = await _kubectl(kube, *args, stdin=stdin)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.fixture(scope="module")
async def crds(kube: Kube) -> Kube:
    """The CRDs from the chart, installed as a user would and Established. They stay for the
    rest of the session's cluster: installing them again is a no-op."""
    await _ok(kube, "apply", "--server-side", "--field-manager=aioreconcile-tests", "-f", str(CRDS))
    await _ok(
        kube,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/syncs.aioreconcile.dev",
        "crd/receivers.aioreconcile.dev",
    )
    return kube


def _sync(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": {"url": "https://git.example.com/acme/deploy.git"}}
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "Sync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def _receiver(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "provider": "github",
        "secretRef": {"name": "github-token"},
        "syncs": ["shop"],
    }
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "Receiver",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


def _source(**fields: Any) -> dict[str, Any]:
    return {"url": "https://git.example.com/acme/deploy.git", **fields}


def _condition(status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-12-01T05:00:00Z",
        "observedGeneration": 1,
    }


async def _write_status(kube: Kube, kind: str, name: str, namespace: str, status: object) -> None:
    await _ok(
        kube,
        "patch",
        f"{kind}/{name}",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def _table(output: str) -> list[dict[str, str]]:
    """kubectl's table: columns are separated by at least two spaces (values may hold one)."""
    header, *rows = output.strip().splitlines()
    names = re.split(r"\s{2,}", header.strip())
    return [dict(zip(names, re.split(r"\s{2,}", row.strip()), strict=True)) for row in rows]


async def test_minimal_sync_is_accepted_and_comes_back_with_the_schema_defaults(
    crds: Kube, namespace: str
) -> None:
    await _ok(crds, "apply", "-f", "-", stdin=json.dumps(_sync("shop", namespace)))

    stored = json.loads(await _ok(crds, "get", "sync/shop", "-n", namespace, "-o", "json"))

    assert stored["spec"] == {
        "source": {
            "url": "https://git.example.com/acme/deploy.git",
            "ref": "main",
            "path": ".",
            "interval": "5m",
            "timeout": "60s",
        },
        "render": {"type": "auto"},
        "prune": True,
        "selfHeal": True,
        "suspend": False,
        "allowEmpty": False,
        "wait": False,
    }


async def test_minimal_receiver_is_accepted_with_the_default_body_limit(
    crds: Kube, namespace: str
) -> None:
    await _ok(crds, "apply", "-f", "-", stdin=json.dumps(_receiver("github", namespace)))

    stored = json.loads(await _ok(crds, "get", "receiver/github", "-n", namespace, "-o", "json"))

    assert stored["spec"]["maxBodyBytes"] == 5 * 1024 * 1024


def _doc_examples() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "crds.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    return [
        doc
        for block in blocks
        for doc in yaml.safe_load_all(block)
        if isinstance(doc, dict) and doc.get("apiVersion") == API_VERSION
    ]


async def test_every_example_in_the_reference_is_accepted(crds: Kube, namespace: str) -> None:
    examples = _doc_examples()
    assert {e["kind"] for e in examples} == {"Sync", "Receiver"}
    for example in examples:
        example["metadata"]["namespace"] = namespace

    stream = "\n---\n".join(yaml.safe_dump(e) for e in examples)
    await _ok(crds, "apply", "-f", "-", stdin=stream)

    listed = await _ok(crds, "get", "aioreconcile", "-n", namespace, "-o", "name")
    assert sorted(listed.split()) == sorted(
        f"{e['kind'].lower()}.aioreconcile.dev/{e['metadata']['name']}" for e in examples
    )


BAD_SYNCS: list[tuple[str, dict[str, Any], str]] = [
    (
        "url-starts-with-dash",
        {"source": _source(url="-oProxyCommand=touch /tmp/owned")},
        "spec.source.url: must not start with '-'",
    ),
    (
        "url-with-password",
        {"source": _source(url="https://bot:pw@git.example.com/a.git")},
        "spec.source.url: must not contain a password",
    ),
    (
        "url-unknown-scheme",
        {"source": _source(url="ftp://git.example.com/a.git")},
        "spec.source.url: must be an https://, http://, ssh:// (git+ssh://, ssh+git://) or git://",
    ),
    (
        "url-ssh-host-is-an-option",
        {"source": _source(url="ssh://-oProxyCommand=x/a.git", secretRef={"name": "git"})},
        "spec.source.url: must be an https://",
    ),
    (
        "ssh-url-without-secret",
        {"source": _source(url="git@github.com:acme/deploy.git")},
        "spec.source.secretRef: required for an ssh URL",
    ),
    ("no-url", {"source": {"ref": "main"}}, "spec.source.url: Required value"),
    ("no-source", {"source": None}, "spec.source: Required value"),
    (
        "negative-interval",
        {"source": _source(interval="-5m")},
        "spec.source.interval in body should match",
    ),
    ("zero-interval", {"source": _source(interval="0s")}, "spec.source.interval: must be positive"),
    (
        "interval-not-a-duration",
        {"source": _source(interval="5 minutes")},
        "spec.source.interval in body should match",
    ),
    (
        "git-timeout-bad-unit",
        {"source": _source(timeout="1d")},
        "spec.source.timeout in body should match",
    ),
    ("health-timeout-zero", {"wait": True, "timeout": "0s"}, "spec.timeout: must be positive"),
    (
        "health-timeout-without-wait",
        {"timeout": "3m"},
        "spec.timeout: only used with wait: true",
    ),
    ("ref-with-tilde", {"source": _source(ref="main~1")}, "spec.source.ref: not a valid branch"),
    ("ref-starts-with-dash", {"source": _source(ref="-x")}, "spec.source.ref: must not start"),
    (
        "ref-outside-heads-and-tags",
        {"source": _source(ref="refs/pull/1/head")},
        "spec.source.ref: a full ref must be under refs/heads/ or refs/tags/",
    ),
    (
        "ref-abbreviated-sha",
        {"source": _source(ref="0a1b2c3d")},
        "spec.source.ref: looks like an abbreviated commit SHA",
    ),
    (
        "ref-upper-case-sha",
        {"source": _source(ref=SHA.upper())},
        "spec.source.ref: a commit SHA must be lower-case hex",
    ),
    ("path-escapes", {"source": _source(path="apps/../../etc")}, "spec.source.path: must stay"),
    ("path-absolute", {"source": _source(path="/etc")}, "spec.source.path: must stay"),
    (
        "verify-without-keyring",
        {"source": _source(verify={"mode": "gpg"})},
        "spec.source.verify: mode gpg or ssh needs secretRef or configMapRef",
    ),
    (
        "verify-with-two-keyrings",
        {
            "source": _source(
                verify={"mode": "ssh", "secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}
            )
        },
        "spec.source.verify: give secretRef or configMapRef, not both",
    ),
    (
        "verify-keyring-unused",
        {"source": _source(verify={"mode": "none", "secretRef": {"name": "a"}})},
        "spec.source.verify: secretRef and configMapRef are only read with mode gpg or ssh",
    ),
    (
        "verify-unknown-mode",
        {"source": _source(verify={"mode": "x509", "secretRef": {"name": "a"}})},
        'spec.source.verify.mode: Unsupported value: "x509"',
    ),
    (
        "verify-without-mode",
        {"source": _source(verify={"secretRef": {"name": "a"}})},
        "spec.source.verify.mode: Required value",
    ),
    ("render-unknown-type", {"render": {"type": "jsonnet"}}, "spec.render.type: Unsupported"),
    (
        "helm-options-with-plain",
        {"render": {"type": "plain", "values": {"replicas": 3}}},
        "spec.render: releaseName, values and valuesFiles are Helm options",
    ),
    (
        "values-file-escapes",
        {"render": {"type": "helm", "valuesFiles": ["../secrets.yaml"]}},
        "spec.render.valuesFiles: each must stay inside the repository",
    ),
    (
        "target-namespace-not-a-label",
        {"targetNamespace": "Shop_Prod"},
        "spec.targetNamespace in body should match",
    ),
    ("prune-not-a-boolean", {"prune": "yes"}, "spec.prune: Invalid value"),
    ("depends-on-itself", {"dependsOn": [{"name": "bad"}]}, "spec.dependsOn: a Sync cannot"),
    ("depends-on-without-name", {"dependsOn": [{"namespace": "x"}]}, "spec.dependsOn[0].name"),
    ("unknown-field", {"selfheal": False}, 'unknown field "spec.selfheal"'),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [(s, e) for _, s, e in BAD_SYNCS], ids=[i for i, _, _ in BAD_SYNCS]
)
async def test_invalid_sync_is_refused_naming_the_field(
    crds: Kube, namespace: str, spec: dict[str, Any], expected: str
) -> None:
    body = _sync("bad", namespace, **spec)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}

    done = await _kubectl(crds, "apply", "-f", "-", stdin=json.dumps(body))

    assert done.returncode != 0
    assert expected in done.stderr.decode()
    absent = await _kubectl(crds, "get", "sync/bad", "-n", namespace)
    assert absent.returncode != 0


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/deploy.git",
        "http://git.internal:8080/acme/deploy",
        "git://git.example.com/acme/deploy.git",
        "ssh://git@github.com/acme/deploy.git",
        "ssh://git@bitbucket.example.com:7999/acme/deploy.git",
        "git+ssh://git@[fd00::1]/acme/deploy.git",
        "git@github.com:acme/deploy.git",
    ],
)
async def test_every_remote_url_form_is_accepted(crds: Kube, namespace: str, url: str) -> None:
    body = _sync("shop", namespace, source=_source(url=url, secretRef={"name": "git"}))

    await _ok(crds, "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(body))


async def test_sync_name_must_be_a_label_value(crds: Kube, namespace: str) -> None:
    done = await _kubectl(crds, "apply", "-f", "-", stdin=json.dumps(_sync("shop.prod", namespace)))

    assert done.returncode != 0
    assert "metadata.name: must be a DNS label" in done.stderr.decode()


BAD_RECEIVERS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-provider", {"provider": "bitbucket"}, 'spec.provider: Unsupported value: "bitbu'),
    ("no-provider", {"provider": None}, "spec.provider: Required value"),
    ("no-secret", {"secretRef": None}, "spec.secretRef: Required value"),
    ("names-no-syncs", {"syncs": None}, "spec.syncs or spec.selector: name the Syncs"),
    ("empty-syncs", {"syncs": []}, "spec.syncs or spec.selector: name the Syncs"),
    ("sync-name-not-a-label", {"syncs": ["Shop"]}, "spec.syncs[0] in body should match"),
    (
        "selector-of-every-sync",
        {"syncs": None, "selector": {"matchLabels": {}}},
        "spec.selector: must name at least one label",
    ),
    (
        "in-without-values",
        {"syncs": None, "selector": {"matchExpressions": [{"key": "team", "operator": "In"}]}},
        "spec.selector.matchExpressions: In and NotIn need values",
    ),
    (
        "unknown-operator",
        {"selector": {"matchExpressions": [{"key": "team", "operator": "Matches"}]}},
        "spec.selector.matchExpressions[0].operator: Unsupported value",
    ),
    ("body-limit-zero", {"maxBodyBytes": 0}, "spec.maxBodyBytes in body should be greater"),
]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(s, e) for _, s, e in BAD_RECEIVERS],
    ids=[i for i, _, _ in BAD_RECEIVERS],
)
async def test_invalid_receiver_is_refused_naming_the_field(
    crds: Kube, namespace: str, spec: dict[str, Any], expected: str
) -> None:
    done = await _kubectl(
        crds, "apply", "-f", "-", stdin=json.dumps(_receiver("bad", namespace, **spec))
    )

    assert done.returncode != 0
    assert expected in done.stderr.decode()


async def test_receiver_may_name_syncs_by_selector_alone(crds: Kube, namespace: str) -> None:
    selector = {
        "matchLabels": {"team": "shop"},
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["test"]}],
    }
    body = _receiver("by-label", namespace, syncs=None, selector=selector)

    await _ok(crds, "apply", "-f", "-", stdin=json.dumps(body))

    stored = json.loads(await _ok(crds, "get", "receiver/by-label", "-n", namespace, "-o", "json"))
    assert stored["spec"]["selector"] == selector


async def test_get_syncs_shows_ready_status_and_revision_written_through_status(
    crds: Kube, namespace: str
) -> None:
    await _ok(crds, "apply", "-f", "-", stdin=json.dumps(_sync("shop", namespace)))
    status = {
        "observedGeneration": 1,
        "conditions": [_condition("True", "ReconciliationSucceeded", "applied 12 objects")],
        "lastAppliedRevision": SHA,
        "lastAttemptedRevision": SHA,
        "inventorySize": 12,
        "driftHeals": 3,
    }

    await _write_status(crds, "sync", "shop", namespace, status)

    rows = _table(await _ok(crds, "get", "syncs", "-n", namespace))
    assert len(rows) == 1
    assert {k: v for k, v in rows[0].items() if k != "AGE"} == {
        "NAME": "shop",
        "READY": "True",
        "STATUS": "applied 12 objects",
        "REVISION": SHA,
    }
    wide = _table(await _ok(crds, "get", "sy", "-n", namespace, "-o", "wide"))
    assert wide[0]["SUSPENDED"] == "false"
    assert wide[0]["URL"] == "https://git.example.com/acme/deploy.git"


async def test_status_is_only_written_through_the_status_subresource(
    crds: Kube, namespace: str
) -> None:
    body = _sync("shop", namespace)
    body["status"] = {"lastAppliedRevision": SHA}

    await _ok(crds, "apply", "-f", "-", stdin=json.dumps(body))

    stored = json.loads(await _ok(crds, "get", "sync/shop", "-n", namespace, "-o", "json"))
    assert "status" not in stored


async def test_kubectl_wait_for_ready_returns_once_the_condition_is_set(
    crds: Kube, namespace: str
) -> None:
    await _ok(crds, "apply", "-f", "-", stdin=json.dumps(_sync("shop", namespace)))
    not_ready = _condition("False", "FetchFailed", "git ls-remote failed: connection refused")
    await _write_status(crds, "sync", "shop", namespace, {"conditions": [not_ready]})
    command = ["kubectl", "--kubeconfig", str(crds.kubeconfig), "wait", "--timeout=60s"]
    command += ["--for=condition=Ready", "sync/shop", "-n", namespace]

    async with await anyio.open_process(command) as waiting:
        await anyio.sleep(2)
        assert waiting.returncode is None, "kubectl wait returned while Ready was False"
        ready = _condition("True", "ReconciliationSucceeded", f"applied revision {SHA}")
        await _write_status(crds, "sync", "shop", namespace, {"conditions": [ready]})
        with anyio.fail_after(20):
            await waiting.wait()
        assert waiting.stdout is not None
        output = (await waiting.stdout.receive()).decode()

    assert waiting.returncode == 0
    assert "sync.aioreconcile.dev/shop condition met" in output


async def test_get_receivers_shows_ready_and_the_derived_path(crds: Kube, namespace: str) -> None:
    token = secrets.token_hex(32)
    await _ok(
        crds,
        "create",
        "secret",
        "generic",
        "github-token",
        "-n",
        namespace,
        f"--from-literal=token={token}",
    )
    await _ok(crds, "apply", "-f", "-", stdin=json.dumps(_receiver("github", namespace)))
    path = webhook_path("github", namespace, token=token)
    status = {
        "observedGeneration": 1,
        "conditions": [_condition("True", "Succeeded", f"serving {path}")],
        "webhookPath": path,
    }

    await _write_status(crds, "receiver", "github", namespace, status)

    rows = _table(await _ok(crds, "get", "receivers", "-n", namespace))
    assert {k: v for k, v in rows[0].items() if k != "AGE"} == {
        "NAME": "github",
        "READY": "True",
        "PATH": path,
    }


async def test_receiver_status_path_must_be_a_derived_path(crds: Kube, namespace: str) -> None:
    await _ok(crds, "apply", "-f", "-", stdin=json.dumps(_receiver("github", namespace)))

    done = await _kubectl(
        crds,
        "patch",
        "receiver/github",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"webhookPath": "/hooks/github"}}),
    )

    assert done.returncode != 0
    assert "status.webhookPath: Invalid value" in done.stderr.decode()
