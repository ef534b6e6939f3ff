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
# CRD mode with Roles only: the Syncs of one namespace (a Role cannot list every namespace's).
NAMESPACED = {
    "rbac": {"scope": "namespaced", "namespaces": ["team-a", "team-b"]},
    "watchNamespace": "team-a",
}
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
    "leaderElection": {"leaseDuration": "3s", "renewDeadline": "2s", "retryPeriod": "500ms"},
    "otel": {
        "endpoint": "http://jaeger-collector.observability:4318",
        "tracesSampler": "parentbased_traceidratio",
        "tracesSamplerArg": "0.25",
    },
}
MATRIX = {"default": {}, "file-mode": FILE_MODE, "namespaced": NAMESPACED}
SHARDED = {"replicas": 3, "sharding": {"shards": 3}}
MATRIX |= {"ingress+serviceMonitor": EXPOSED, "replicas-3": THREE, "sharded": SHARDED}


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
    # Inventories in the release namespace, whatever applyRules says; the Lease there too.
    own = one(objects, "Role", f"{FULLNAME}-own")
    assert own["metadata"]["namespace"] == NAMESPACE
    assert {r["resources"][0] for r in own["rules"]} == {"configmaps"}
    assert one(objects, "Role", f"{FULLNAME}-leader-election")["metadata"]["namespace"] == NAMESPACE
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


def flag(args: list[str], name: str) -> str:
    assert name in args, args
    return args[args.index(name) + 1]


def grants(rule_list: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    """Whether RBAC rules allow ``verb`` on ``group``/``resource`` (wildcards included)."""
    return any(
        (group in r["apiGroups"] or "*" in r["apiGroups"])
        and (resource in r["resources"] or "*" in r["resources"])
        and (verb in r["verbs"] or "*" in r["verbs"])
        and not r.get("resourceNames")
        for r in rule_list
    )


def test_leader_election_is_on_by_default_with_client_go_timings_and_a_lease_role() -> None:
    objects = render({})
    args = container(objects)["args"]
    assert "--leader-elect" in args
    assert flag(args, "--leader-election-id") == FULLNAME  # two releases, two Leases
    assert flag(args, "--leader-election-namespace") == NAMESPACE
    assert flag(args, "--leader-election-lease-duration") == "15s"
    assert flag(args, "--leader-election-renew-deadline") == "10s"
    assert flag(args, "--leader-election-retry-period") == "2s"
    role = one(objects, "Role", f"{FULLNAME}-leader-election")
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
    ]
    binding = one(objects, "RoleBinding", f"{FULLNAME}-leader-election")
    assert binding["roleRef"]["name"] == f"{FULLNAME}-leader-election"
    assert binding["subjects"][0]["name"] == FULLNAME


def test_leader_election_values_become_the_flags_and_off_means_no_flag_and_no_lease_rights() -> (
    None
):
    args = container(render(THREE))["args"]
    assert flag(args, "--leader-election-lease-duration") == "3s"
    assert flag(args, "--leader-election-renew-deadline") == "2s"
    assert flag(args, "--leader-election-retry-period") == "500ms"
    named = container(render({"leaderElection": {"id": "gitops-leader"}}))["args"]
    assert flag(named, "--leader-election-id") == "gitops-leader"

    off = render({"leaderElection": {"enabled": False}})
    assert not any(a.startswith("--leader-elect") for a in container(off)["args"])
    everywhere = [r for kind in ("Role", "ClusterRole") for _, r in rules(off, kind)]
    narrowed = render({"leaderElection": {"enabled": False}, "rbac": {"applyRules": []}})
    assert not any(
        "leases" in r["resources"]
        for kind in ("Role", "ClusterRole")
        for _, r in rules(narrowed, kind)
    )
    assert everywhere  # the rest of the RBAC is still there


def test_sharding_becomes_the_flag_and_lets_the_lease_role_list_and_delete() -> None:
    objects = render(SHARDED)
    args = container(objects)["args"]
    assert flag(args, "--shards") == "3"
    assert "--leader-elect" in args  # the shards use its Lease namespace, id and timings
    role = one(objects, "Role", f"{FULLNAME}-leader-election")
    for verb in ("get", "create", "update", "list", "delete"):
        assert grants(role["rules"], "coordination.k8s.io", "leases", verb), verb
    assert "--shards" not in container(render({}))["args"]


# docs/crds.md, "RBAC in CRD mode": what the controller's own account needs, whatever the Syncs
# apply (rbac.applyRules narrowed to nothing proves the chart grants it on its own).
CRD_MODE_NEEDS = [
    ("aioreconcile.dev", "syncs", ("get", "list", "watch", "patch")),
    ("aioreconcile.dev", "receivers", ("get", "list", "watch", "patch")),
    ("aioreconcile.dev", "syncs/status", ("patch",)),
    ("aioreconcile.dev", "receivers/status", ("patch",)),
    ("aioreconcile.dev", "syncs/finalizers", ("update",)),
    ("", "secrets", ("get", "list", "watch")),
    ("", "configmaps", ("get", "list", "watch", "create", "patch", "delete")),
    ("events.k8s.io", "events", ("create", "patch")),
    ("", "serviceaccounts", ("impersonate",)),
]


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_crd_mode_rbac_covers_the_crds_md_table_without_apply_rules(scope: str) -> None:
    values: dict[str, Any] = {"rbac": {"scope": scope, "applyRules": [], "watchRules": []}}
    if scope == "namespaced":
        values["watchNamespace"] = "team-a"
    objects = render(values)
    # Where the Syncs are: every namespace (a ClusterRole), or the watched one (its Role).
    kind, where = ("ClusterRole", "") if scope == "cluster" else ("Role", "team-a")
    granted = [
        r
        for namespace, r in rules(objects, kind)
        if namespace == where and not r.get("resourceNames")
    ]
    missing = [
        (group, resource, verb)
        for group, resource, verbs in CRD_MODE_NEEDS
        for verb in verbs
        if not grants(granted, group, resource, verb)
    ]
    assert missing == []
    lease = [r for namespace, r in rules(objects, "Role") if namespace == NAMESPACE]
    for verb in ("get", "create", "update"):
        assert grants(lease, "coordination.k8s.io", "leases", verb)
    # Nothing beyond the table: no write of Secrets, no cluster-scoped writes.
    everything = [r for kind in ("Role", "ClusterRole") for _, r in rules(objects, kind)]
    assert not grants(everything, "", "secrets", "patch")
    assert not grants(everything, "rbac.authorization.k8s.io", "clusterroles", "create")


def test_watch_namespace_becomes_the_flag_and_its_namespace_gets_the_roles() -> None:
    assert "--watch-namespace" not in container(render({}))["args"]
    objects = render(NAMESPACED)
    assert flag(container(objects)["args"], "--watch-namespace") == "team-a"
    extra = render({**NAMESPACED, "watchNamespace": "team-c"})
    roles = {o["metadata"]["namespace"] for o in extra if o["kind"] == "Role"}
    assert "team-c" in roles


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**FILE_MODE, "watchNamespace": "team-a"}, "watchNamespace is for CRD mode"),
        (
            {"rbac": {"scope": "namespaced"}},
            "rbac.scope namespaced in CRD mode needs watchNamespace",
        ),
        ({**FILE_MODE, "sharding": {"shards": 3}}, "sharding.shards splits Sync objects"),
        (
            {"sharding": {"shards": 3}, "leaderElection": {"enabled": False}},
            "sharding.shards needs leaderElection.enabled",
        ),
    ],
    ids=[
        "watchNamespace-in-file-mode",
        "namespaced-crd-mode-without-watchNamespace",
        "sharding-in-file-mode",
        "sharding-without-leader-election",
    ],
)
def test_values_the_controller_could_not_honour_are_refused(
    values: dict[str, Any], message: str
) -> None:
    result = helm("template", RELEASE, str(CHART), values=values)
    assert result.returncode != 0
    assert message in result.stderr
