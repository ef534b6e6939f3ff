"""Realistic manifests for the benchmarks: what a platform team's repository holds.

Three objects in five are ConfigMaps of ~3 KiB (a dozen keys: an application properties file, a
JSON document, short settings), one a Deployment (labels, annotations, env, probes, resources,
two ports), one a Service (two named ports). ``revision`` changes what an update changes: a
ConfigMap's ``LOG_LEVEL`` and ``properties``, a Deployment's image tag, a Service's
``targetPort`` for the metrics port.
"""

from typing import Any, Final

KINDS: Final = ("ConfigMap", "ConfigMap", "ConfigMap", "Deployment", "Service")


def kind_of(i: int) -> str:
    return KINDS[i % len(KINDS)]


def name_of(i: int) -> str:
    return {"ConfigMap": "settings", "Deployment": "web", "Service": "web"}[
        kind_of(i)
    ] + f"-{i:05d}"


def manifest(i: int, namespace: str, *, revision: int = 0) -> dict[str, Any]:
    """Object ``i`` of a repository; ``revision`` > 0 gives its changed version."""
    kind, name = kind_of(i), name_of(i)
    labels = {"app.kubernetes.io/name": f"shop-{i % 97}", "app.kubernetes.io/part-of": "shop"}
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    if kind == "ConfigMap":
        properties = "\n".join(
            f"shop.service-{k}.url=http://service-{k}.shop.svc.cluster.local:8080/api/v{revision}"
            for k in range(24)
        )
        document = (
            '{"features": {'
            + ", ".join(f'"feature-{k}": {str(k % 3 == 0).lower()}' for k in range(24))
            + "}}"
        )
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": {
                "LOG_LEVEL": "debug" if revision else "info",
                "REGION": "eu-west-1",
                "MAX_CONNECTIONS": "128",
                "TIMEOUT": "30s",
                "application.properties": properties,
                "features.json": document,
                "index": str(i),
            },
        }
    selector = {"app.kubernetes.io/instance": name}
    if kind == "Service":
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "selector": selector,
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "metrics", "port": 9090, "targetPort": 9091 if revision else 9090},
                ],
            },
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**metadata, "annotations": {"team.example.com/owner": "payments"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**selector, **labels}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": f"registry.example.com/shop/web:1.{27 + revision}.0",
                            "args": ["--config=/etc/shop/application.properties"],
                            "ports": [
                                {"name": "http", "containerPort": 8080},
                                {"name": "metrics", "containerPort": 9090},
                            ],
                            "env": [
                                {"name": "SHOP_REGION", "value": "eu-west-1"},
                                {"name": "SHOP_INDEX", "value": str(i)},
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": "http"},
                                "periodSeconds": 5,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/live", "port": "http"},
                                "initialDelaySeconds": 10,
                            },
                        }
                    ]
                },
            },
        },
    }


def manifests(
    n: int, namespace: str, *, changed: frozenset[int] = frozenset()
) -> list[dict[str, Any]]:
    return [manifest(i, namespace, revision=1 if i in changed else 0) for i in range(n)]


def every_tenth(n: int) -> frozenset[int]:
    """10 % of the objects, in the kinds' own proportions: every tenth group of five."""
    return frozenset(i for i in range(n) if (i // len(KINDS)) % 10 == 0)
