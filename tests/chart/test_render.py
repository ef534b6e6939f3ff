"""The Helm chart, rendered by the real helm (the testenv's, `build.sh helm`) for a matrix of
values: `helm lint --strict` is clean, and the rendered objects say what docs/install.md
promises (restricted securityContext, probes on the ops port, RBAC scope, no secret value in a
ConfigMap, optional objects only when asked for)."""

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from aioreconcile.engine.configuration import parse_config
from tests.chart.rendering import CHART, NAMESPACE, RELEASE, helm, render

FULLNAME = "r-aioreconcile"

FILE_MODE: dict[str, Any] = {
    "config": {
        "syncs": [
            {
                "name": "shop",
                "source": {
                    "url": "https://git.example.com/acme/deploy.git",
                    "ref": "main",
                    "path": "clusters/prod",
                    "auth": {
                        "username": "deploy-bot",
                        "passwordFile": "/var/run/secrets/aioreconcile/git-creds/password",
                    },
                },
            }
        ],
        "receivers": [
            {
                "name": "github",
                "provider": "github",
                "secretFile": "/var/run/secrets/aioreconcile/webhook/secret",
                "syncs": ["shop"],
            }
        ],
    },
    "existingSecrets": [
        {"name": "webhook"},
        {"name": "git-creds", "items": [{"key": "password", "path": "password"}]},
    ],
    # A secret reaches the pod as a reference, never as a value; this one is an env var.
    "env": [
        {
            "name": "GIT_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "git-creds", "key": "password"}},
        }
    ],
}
NAMESPACED = {"rbac": {"scope": "namespaced", "namespaces": ["team-a", "team-b"]}}
EXPOSED = {
    "webhook": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": ["gitops.example.com"],
            "tls": [{"secretName": "gitops-tls", "hosts": ["gitops.example.com"]}],
        }
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
}
THREE = {
    "replicas": 3,
    "otel": {
        "endpoint": "http://jaeger-collector.observability:4318",
        "tracesSampler": "parentbased_traceidratio",
        "tracesSamplerArg": "0.25",
    },
}
MATRIX = {"default": {}, "file-mode": FILE_MODE, "namespaced": NAMESPACED}
MATRIX |= {"ingress+serviceMonitor": EXPOSED, "replicas-3": THREE}


def one(objects: list[dict[str, Any]], kind: str, name: str = FULLNAME) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def rules(objects: list[dict[str, Any]], kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] == kind:
            for rule in o["rules"]:
                yield o["metadata"].get("namespace", ""), rule


@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_helm_lint_strict_is_clean(values: dict[str, Any]) -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout, result.stdout
    assert "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_pod_is_restricted_and_probed_on_the_ops_port(values: dict[str, Any]) -> None:
    objects = render(values)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    main = container(objects)
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532

    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"webhook": 8080, "ops": 8081}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    args = main["args"]
    assert args[args.index("--listen") + 1] == "0.0.0.0:8080"
    assert args[args.index("--ops-listen") + 1] == "0.0.0.0:8081"
    assert args[args.index("--namespace") + 1] == NAMESPACE

    # Writable: only emptyDirs (git cache, HOME, /tmp); the root filesystem is read-only.
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/var/cache/aioreconcile", "/home/aioreconcile", "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], path
    for mount in main["volumeMounts"]:
        if "emptyDir" not in volumes[mount["name"]]:
            assert mount.get("readOnly") is True, mount

    spread = pod["topologySpreadConstraints"]
    assert spread[0]["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "aioreconcile",
        "app.kubernetes.io/instance": RELEASE,
    }
    assert main["image"] == "aioreconcile:0.1.0"


def test_default_is_crd_mode_cluster_wide_with_flux_like_rights() -> None:
    objects = render({})
    assert "--config" not in container(objects)["args"]
    assert "ConfigMap" not in kinds(objects)
    assert not kinds(objects) & {"Ingress", "ServiceMonitor", "Secret"}
    cluster_rules = [r for _, r in rules(objects, "ClusterRole")]
    assert {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]} in cluster_rules
    assert {
        "apiGroups": [""],
        "resources": ["serviceaccounts", "groups"],
        "verbs": ["impersonate"],
    } in cluster_rules
    # CRD mode reads the Secrets a Sync references from the API.
    assert any(
        "secrets" in r["resources"] and r["verbs"] == ["get", "list", "watch"]
        for r in cluster_rules
    )
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    # Inventories and leases in the release namespace, whatever applyRules says.
    own = one(objects, "Role", f"{FULLNAME}-own")
    assert own["metadata"]["namespace"] == NAMESPACE
    assert {r["resources"][0] for r in own["rules"]} == {"configmaps", "leases"}
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert one(objects, "Deployment")["spec"]["replicas"] == 1


def test_file_mode_config_is_a_configmap_without_secret_values() -> None:
    objects = render(FILE_MODE)
    main = container(objects)
    args = main["args"]
    assert args[args.index("--config") + 1] == "/etc/aioreconcile/config.yaml"
    config_map = one(objects, "ConfigMap", f"{FULLNAME}-config")
    text = config_map["data"]["config.yaml"]
    # What the controller reads is what the values said, and the controller accepts it.
    assert yaml.safe_load(text) == FILE_MODE["config"]
    parse_config(text, origin="config.yaml")
    # No Secret is rendered, no secret value anywhere; the Secrets are mounted read-only files.
    assert "Secret" not in kinds(objects)
    for o in objects:
        if o["kind"] == "ConfigMap":
            for value in o["data"].values():
                assert "password:" not in value
                assert "secret:" not in value
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts["secret-webhook"]["mountPath"] == "/var/run/secrets/aioreconcile/webhook"
    assert mounts["secret-git-creds"]["readOnly"] is True
    volumes = {
        v["name"]: v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["secret-webhook"]["secret"]["secretName"] == "webhook"
    assert volumes["secret-git-creds"]["secret"]["items"] == [
        {"key": "password", "path": "password"}
    ]
    assert volumes["config"]["configMap"]["name"] == f"{FULLNAME}-config"
    env = {e["name"]: e for e in main["env"]}
    assert "value" not in env["GIT_TOKEN"]
    # File mode gets its secrets as files: no read of Secrets through the API for itself.
    assert not any(
        "secrets" in r["resources"]
        and "aioreconcile.dev" not in r["apiGroups"]
        and r["verbs"] == ["get", "list", "watch"]
        for _, r in rules(objects, "ClusterRole")
    )
    # A changed config rolls the pods.
    changed = {**FILE_MODE, "config": {**FILE_MODE["config"], "receivers": []}}
    annotation = "checksum/config"
    before = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"][annotation]
    after = one(render(changed), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert after[annotation] != before


def test_namespaced_rbac_writes_only_in_its_namespaces() -> None:
    objects = render(NAMESPACED)
    roles = {
        o["metadata"]["namespace"]
        for o in objects
        if o["kind"] == "Role" and o["metadata"]["name"] == FULLNAME
    }
    assert roles == {NAMESPACE, "team-a", "team-b"}
    bindings = [
        o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == FULLNAME
    ]
    assert {b["metadata"]["namespace"] for b in bindings} == roles
    assert all(b["roleRef"]["kind"] == "Role" for b in bindings)
    # Cluster-wide: read only (the drift watch), and impersonation of the namespaces' groups.
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"] == [
        f"{FULLNAME}-watch"
    ]
    for _, rule in rules(objects, "ClusterRole"):
        if rule["verbs"] == ["impersonate"]:
            assert rule["resources"] == ["groups"]
            assert set(rule["resourceNames"]) == {
                "system:authenticated",
                "system:serviceaccounts",
                *(f"system:serviceaccounts:{n}" for n in roles),
            }
        else:
            assert rule["verbs"] == ["list", "watch"], rule
    # Accounts are impersonated only in the namespaces' Roles.
    for namespace, rule in rules(objects, "Role"):
        if "impersonate" in rule["verbs"]:
            assert rule["resources"] == ["serviceaccounts"]
            assert namespace in roles


def test_narrowed_apply_rules_replace_the_wildcard() -> None:
    narrow = [
        {"apiGroups": ["", "apps"], "resources": ["configmaps", "deployments"], "verbs": ["*"]}
    ]
    objects = render({"rbac": {"applyRules": narrow}})
    cluster_rules = [r for _, r in rules(objects, "ClusterRole")]
    assert narrow[0] in cluster_rules
    assert not any(r["resources"] == ["*"] for r in cluster_rules)


def test_ingress_and_service_monitor_only_when_enabled() -> None:
    objects = render(EXPOSED)
    ingress = one(objects, "Ingress", f"{FULLNAME}-webhook")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == EXPOSED["webhook"]["ingress"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert rule["host"] == "gitops.example.com"
    assert path["path"] == "/hooks/"
    assert path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {
        "name": f"{FULLNAME}-webhook",
        "port": {"name": "webhook"},
    }
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "ops"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    metrics = one(objects, "Service", f"{FULLNAME}-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    )
    assert [(p["name"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [("ops", "ops")]
    webhook = one(objects, "Service", f"{FULLNAME}-webhook")
    assert [(p["port"], p["targetPort"]) for p in webhook["spec"]["ports"]] == [(80, "webhook")]


def test_replicas_and_otel_settings_from_values() -> None:
    objects = render(THREE)
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    assert env == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger-collector.observability:4318",
        "OTEL_SERVICE_NAME": "aioreconcile",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_network_policy_opens_the_webhook_port_and_keeps_the_ops_port_in_house() -> None:
    policy = one(render({}), "NetworkPolicy")
    webhook, ops = policy["spec"]["ingress"]
    assert webhook == {"ports": [{"port": "webhook", "protocol": "TCP"}]}  # from anywhere
    assert ops["ports"] == [{"port": "ops", "protocol": "TCP"}]
    assert ops["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]


def test_an_unknown_rbac_scope_is_refused_naming_it() -> None:
    result = helm("template", RELEASE, str(CHART), values={"rbac": {"scope": "global"}})
    assert result.returncode != 0
    assert 'rbac.scope must be cluster or namespaced, not "global"' in result.stderr


def _leaves(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{path}.")
        else:
            yield path


def test_every_value_is_in_the_readme_table_and_every_row_is_a_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    rows = set(re.findall(r"^\| `([A-Za-z.*]+)` \|", readme, flags=re.MULTILINE))
    documented = {row.removesuffix(".*") for row in rows}
    leaves = set(_leaves(values))
    for leaf in leaves:
        parts = leaf.split(".")
        ancestors = {".".join(parts[: i + 1]) for i in range(len(parts))}
        assert ancestors & documented, f"{leaf} is not in the README's values table"
    for row in documented:
        assert any(leaf == row or leaf.startswith(f"{row}.") for leaf in leaves), row


def test_without_rbac_and_service_account_creation_it_uses_the_named_account() -> None:
    objects = render(
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}}
    )
    assert not kinds(objects) & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role"}
    assert "RoleBinding" not in kinds(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops"


def test_optional_objects_can_be_switched_off() -> None:
    objects = render(
        {
            "podDisruptionBudget": {"enabled": False},
            "networkPolicy": {"enabled": False},
            "metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}},
        }
    )
    assert not kinds(objects) & {"PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"}
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Service"] == [
        f"{FULLNAME}-webhook"
    ]
