"""Fuzz what a sync reads from a commit: YAML and JSON documents (Lists included), helm's
output, kustomization files and a chart's ``Chart.yaml``.

Run: ``python -m fuzz.manifests -runs=100000`` or ``-max_total_time=300``.

An input's first line says which reader gets the rest: ``yaml`` (``parse_documents``, then
namespace defaulting and the duplicate check, as the plain renderer does), ``json``
(``parse_json``), ``helm`` (``adapters.render.helm.parse_helm_output``, pure), or ``tree``:
files written as ``=== <path>`` blocks, read by ``engine.changes.inputs`` for a kustomize and a
helm sync (which files a sync reads: kustomizations followed, ``Chart.yaml`` dependencies).

What must hold: the manifest readers return or raise ``ManifestError`` naming the file
(``harness.check_error``), never quoting a value (the planted Secret data); ``inputs`` never
raises (a source it cannot follow is ``unknown``, which means "render again").
"""

from collections.abc import Iterator
from pathlib import Path

import yaml

from aioreconcile.adapters.render.helm import parse_helm_output
from aioreconcile.engine.changes import inputs
from aioreconcile.engine.manifests import (
    check_unique,
    default_namespace,
    known_documents,
    parse_documents,
    parse_json,
)
from aioreconcile.engine.model import Manifest, ManifestError, ObjectRef
from aioreconcile.engine.sources import RenderSpec, RenderType
from fuzz.harness import (
    FIXTURES,
    PLANTED,
    InvariantBroken,
    check_error,
    planted_as_credential,
    run,
)

ORIGIN = "deploy/app.yaml"
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "CustomResourceDefinition", "Node"}
_KNOWN = {"ConfigMap", "Secret", "Deployment", "Service", "Pod", "Job", *_CLUSTER_SCOPED}


def _scope(ref: ObjectRef) -> bool | None:
    """Discovery as a function: known kinds have a scope, others are not known yet."""
    if ref.kind not in _KNOWN:
        return None
    return ref.kind not in _CLUSTER_SCOPED


def files(text: str) -> dict[str, str]:
    """``=== path`` blocks -> {path: content}."""
    tree: dict[str, str] = {}
    for block in text.split("=== ")[1:]:
        path, _, content = block.partition("\n")
        tree[path.strip()] = content
    return tree


def exercise(mode: str, text: str) -> None:
    try:
        if mode == "json":
            manifests = parse_json(text, origin=ORIGIN)
        elif mode == "helm":
            # A "# Source:" line is helm's, naming the template: it is the origin, quoted on
            # purpose, so the planted value does not count there.
            lines = text.split("\n")
            text = "\n".join(
                line.replace(PLANTED, "planted") if line.startswith("# Source:") else line
                for line in lines
            )
            manifests = parse_helm_output(
                text, directory=Path("/repo/charts/app"), root=Path("/repo")
            )
        elif mode == "tree":
            tree = files(text)
            for render in (RenderType.KUSTOMIZE, RenderType.HELM, RenderType.AUTO):
                spec = RenderSpec(type=render, values_files=("values-prod.yaml",))
                needed = inputs("app", spec, read=tree.get)
                if needed.unknown is not None and PLANTED in needed.unknown:
                    raise InvariantBroken(f"{needed.unknown!r} quotes the planted credential")
            return
        else:
            manifests = parse_documents(text, origin=ORIGIN)
            _same_with_known(text, default_namespace(manifests, "team", is_namespaced=_scope))
        check_unique(default_namespace(manifests, "team", is_namespaced=_scope))
    except ManifestError as e:
        check_error(e, names=(ORIGIN, "charts/app"), planted=planted_as_credential(text))


def _same_with_known(text: str, full: list[Manifest]) -> None:
    """The push's path (``KnownDocuments``: the documents of a render whose text is known are
    not parsed again) gives the refs, bodies and origins of the full parse."""
    known = known_documents(full)
    again = default_namespace(
        parse_documents(text, origin=ORIGIN, known=known), "team", is_namespaced=_scope
    )
    seen = [(m.ref, repr(m.body), m.origin) for m in again]  # repr: NaN is not equal to NaN
    if seen != [(m.ref, repr(m.body), m.origin) for m in full]:
        raise InvariantBroken("the known-documents path differs from a full parse")


def test_one_input(data: bytes) -> None:
    mode, _, rest = data.partition(b"\n")
    exercise(mode.decode("latin-1").strip(), rest.decode("utf-8", "replace"))


_SECRET = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: token}}
stringData: {{token: {PLANTED}}}
data: {{password: {PLANTED}}}
"""
_LIST = """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}, data: {k: v}}
- apiVersion: v1
  kind: ConfigMapList
  items: [{apiVersion: v1, kind: ConfigMap, metadata: {name: b, namespace: other}}]
- {apiVersion: v1, kind: Namespace, metadata: {name: team}}
"""
_CYCLIC = """\
apiVersion: v1
kind: List
items: &items [{apiVersion: v1, kind: List, items: *items}]
"""
_TREE = """\
=== app/kustomization.yaml
resources: [deployment.yaml, ../base, svc.yaml]
patches:
- path: patch.yaml
configMapGenerator:
- name: settings
  files: [app.properties]
  envs: [.env]
images: [{name: app, newTag: v2}]
=== base/kustomization.yaml
resources: [cm.yaml]
=== app/Chart.yaml
apiVersion: v2
name: app
version: 1.0.0
dependencies:
- {name: lib, repository: "file://../lib"}
- {name: redis, repository: https://charts.example.com}
"""


def seeds() -> Iterator[bytes]:
    for path in sorted(FIXTURES.rglob("*.yaml")):
        case = yaml.safe_load(path.read_text())
        keys = ("object", "desired", "live") if isinstance(case, dict) else ()
        for document in (case[k] for k in keys if k in case):
            yield b"yaml\n" + yaml.safe_dump(document).encode()
    yield b"yaml\n" + (_SECRET + "---\n" + _LIST).encode()
    yield b"json\n" + yaml.safe_load(_LIST).__repr__().replace("'", '"').encode()
    yield (
        b"helm\n---\n# Source: app/templates/cm.yaml\n"
        + _SECRET.encode()
        + b"---\n# Source: app/templates/list.yaml\n"
        + _LIST.encode()
    )
    yield b"tree\n" + _TREE.encode()
    yield b"yaml\n" + _CYCLIC.encode()


if __name__ == "__main__":
    run("manifests", test_one_input, seeds())
