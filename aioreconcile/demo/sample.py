"""The sample repository the demo serves: a small but real app in a kustomize base + overlay.

Namespace ``demo``, a Deployment, a Service and two ConfigMaps in ``base/``; the overlay
``overlays/demo/`` (the path the demo's sync follows) sets the replica count and the greeting.
The demo cluster has no scheduler, so the Deployment gets no Pods; everything else behaves as on
any cluster. Plain ConfigMaps (no generator hash suffix) keep the names stable, so an edit shows
as ``configured`` and a removal as ``pruned``.
"""

from typing import Final

NAMESPACE: Final = "demo"
SYNC_PATH: Final = "overlays/demo"
SETTINGS_CONFIGMAP: Final = "app-settings"
FLAGS_CONFIGMAP: Final = "app-flags"
DEPLOYMENT: Final = "hello"
GREETING: Final = "Hello from Git"
REPLICAS: Final = 2

FILES: Final[dict[str, str]] = {
    "README.md": """\
# The aioreconcile demo app

`overlays/demo` is what the controller applies (kustomize), into the Namespace `demo`.
Edit a file, `git commit -am "..."`, and the commit is in the cluster before you look:
the post-commit hook pushes it and sends a signed webhook to the controller.
""",
    "base/kustomization.yaml": """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - namespace.yaml
  - deployment.yaml
  - service.yaml
  - settings.yaml
  - flags.yaml
""",
    "base/namespace.yaml": f"""\
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
""",
    "base/deployment.yaml": f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {DEPLOYMENT}
  labels:
    app: {DEPLOYMENT}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {DEPLOYMENT}
  template:
    metadata:
      labels:
        app: {DEPLOYMENT}
    spec:
      containers:
        - name: web
          image: registry.k8s.io/e2e-test-images/agnhost:2.53
          args: ["netexec", "--http-port=8080"]
          ports:
            - containerPort: 8080
          envFrom:
            - configMapRef:
                name: {SETTINGS_CONFIGMAP}
""",
    "base/service.yaml": f"""\
apiVersion: v1
kind: Service
metadata:
  name: {DEPLOYMENT}
spec:
  selector:
    app: {DEPLOYMENT}
  ports:
    - port: 80
      targetPort: 8080
""",
    "base/settings.yaml": f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {SETTINGS_CONFIGMAP}
data:
  GREETING: "Hello"
  LOG_LEVEL: info
""",
    "base/flags.yaml": f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {FLAGS_CONFIGMAP}
data:
  NEW_CHECKOUT: "false"
""",
    f"{SYNC_PATH}/kustomization.yaml": f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {NAMESPACE}
resources:
  - ../../base
replicas:
  - name: {DEPLOYMENT}
    count: {REPLICAS}
patches:
  - path: settings.yaml
""",
    f"{SYNC_PATH}/settings.yaml": f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {SETTINGS_CONFIGMAP}
data:
  GREETING: "{GREETING}"
""",
}
