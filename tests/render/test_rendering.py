"""Rendering real directories: plain files read from disk, real kubectl kustomize, real helm."""

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from textwrap import dedent

import anyio
import pytest

from aioreconcile.adapters.render import (
    HelmRenderer,
    KustomizeRenderer,
    RenderError,
    RenderSpec,
    RenderType,
    default_renderers,
    detect,
    render,
)
from aioreconcile.engine.manifests import KnownDocuments, known_documents
from aioreconcile.engine.model import Manifest, ManifestError, ObjectRef
from aioreconcile.testing.toolchain import require

KUBECTL = Path(shutil.which("kubectl") or "/usr/bin/kubectl")
SECRET = "hunter2-do-not-print"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
    return root


def config_map(name: str, namespace: str | None = None) -> str:
    namespace_line = f"\n  namespace: {namespace}" if namespace else ""
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}{namespace_line}\n"


def refs(manifests: list[Manifest]) -> list[str]:
    return [str(m.ref) for m in manifests]


def by_name(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {m.ref.name: m for m in manifests}


def scope_of(ref: ObjectRef) -> bool | None:
    namespaced = {"ConfigMap", "Secret", "Deployment", "Service", "Pod", "Widget"}
    cluster = {"ClusterRole", "Namespace", "CustomResourceDefinition"}
    return True if ref.kind in namespaced else False if ref.kind in cluster else None


def helm() -> HelmRenderer:
    return HelmRenderer(helm=require("helm"))


# --- plain directories ---------------------------------------------------------------------------


async def test_plain_directory_is_read_recursively_in_sorted_path_order(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "b.yaml": config_map("b1") + "---\n" + config_map("b2"),
            "a/z.yml": config_map("az"),
            "a/nested/deeper.yaml": config_map("deep"),
            "c.json": '{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"}}',
            "notes.txt": "not a manifest",
            "README.md": "# docs",
        },
    )

    manifests = await render(tmp_path, RenderSpec(type=RenderType.PLAIN))

    assert [(m.ref.name, m.origin) for m in manifests] == [
        ("deep", "a/nested/deeper.yaml, document 1"),
        ("az", "a/z.yml, document 1"),
        ("b1", "b.yaml, document 1"),
        ("b2", "b.yaml, document 2"),
        ("c", "c.json"),
    ]


async def test_hidden_directories_and_files_are_skipped(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app.yaml": config_map("app"),
            ".git/config.yaml": "this: [is not: a manifest",
            ".github/workflows/ci.yml": "on: push\njobs: {}\n",
            "sub/.hidden/x.yaml": config_map("hidden"),
            ".pre-commit-config.yaml": "repos: []\n",
        },
    )

    manifests = await render(tmp_path, RenderSpec())

    assert refs(manifests) == ["ConfigMap/app"]


async def test_broken_yaml_names_file_document_and_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "ok.yaml": config_map("ok"),
            "apps/broken.yaml": config_map("first")
            + f"---\napiVersion: v1\nkind: Secret\nstringData:\n\tpassword: {SECRET}\n",
        },
    )

    with pytest.raises(ManifestError) as caught:
        await render(tmp_path, RenderSpec())

    message = str(caught.value)
    assert message.startswith("apps/broken.yaml: document 2, line 9: ")
    assert SECRET not in message


async def test_same_object_in_two_files_names_both(tmp_path: Path) -> None:
    write(tmp_path, {"one.yaml": config_map("app", "web"), "two/again.yaml": config_map("app")})

    with pytest.raises(ManifestError) as caught:
        await render(tmp_path, RenderSpec(namespace="web"), is_namespaced=scope_of, root=tmp_path)

    assert str(caught.value) == (
        "ConfigMap/web/app is defined twice: in one.yaml, document 1 "
        "and in two/again.yaml, document 1"
    )


async def test_target_namespace_fills_namespaced_objects_only(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "cm.yaml": config_map("defaulted") + "---\n" + config_map("explicit", "own"),
            "rbac.yaml": """\
                apiVersion: rbac.authorization.k8s.io/v1
                kind: ClusterRole
                metadata: {name: reader}
                """,
            "widget.yaml": "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n",
        },
    )

    manifests = await render(tmp_path, RenderSpec(namespace="apps"), is_namespaced=scope_of)

    assert refs(manifests) == [
        "ConfigMap/apps/defaulted",
        "ConfigMap/own/explicit",
        "ClusterRole.rbac.authorization.k8s.io/reader",
        "Gadget.example.com/g",
    ]
    assert by_name(manifests)["defaulted"].body["metadata"]["namespace"] == "apps"


async def test_cluster_scoped_object_with_namespace_is_refused(tmp_path: Path) -> None:
    write(
        tmp_path, {"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: b}"}
    )

    with pytest.raises(
        ManifestError, match=r"^ns\.yaml, document 1: Namespace/a is cluster-scoped"
    ):
        await render(tmp_path, RenderSpec(), is_namespaced=scope_of)


async def test_subdirectory_origins_are_relative_to_the_repository(tmp_path: Path) -> None:
    write(tmp_path, {"clusters/prod/app.yaml": "apiVersion: v1\nkind: ConfigMap\n"})

    with pytest.raises(ManifestError) as caught:
        await render(tmp_path / "clusters" / "prod", RenderSpec(), root=tmp_path)

    assert str(caught.value) == "clusters/prod/app.yaml, document 1: missing metadata"


async def test_a_file_linking_outside_the_repository_is_refused(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside", {"token.yaml": config_map("stolen")})
    repo = write(tmp_path / "repo", {"app.yaml": config_map("app")})
    (repo / "token.yaml").symlink_to(outside / "token.yaml")

    with pytest.raises(ManifestError, match=r"^token\.yaml: links outside the repository$"):
        await render(repo, RenderSpec())


async def test_a_directory_outside_the_repository_or_missing_is_refused(tmp_path: Path) -> None:
    repo = write(tmp_path / "repo", {"app.yaml": config_map("app")})

    with pytest.raises(RenderError, match="outside the repository"):
        await render(tmp_path, RenderSpec(), root=repo)
    with pytest.raises(RenderError, match="is not a directory"):
        await render(repo / "missing", RenderSpec(), root=repo)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(["kustomization.yaml"], RenderType.KUSTOMIZE, id="kustomization.yaml"),
        pytest.param(["kustomization.yml"], RenderType.KUSTOMIZE, id="kustomization.yml"),
        pytest.param(["Kustomization"], RenderType.KUSTOMIZE, id="Kustomization"),
        pytest.param(["Chart.yaml"], RenderType.HELM, id="Chart.yaml"),
        pytest.param(["Chart.yaml", "kustomization.yaml"], RenderType.KUSTOMIZE, id="both"),
        pytest.param(["app.yaml"], RenderType.PLAIN, id="plain"),
        pytest.param(["sub/Chart.yaml"], RenderType.PLAIN, id="only at the top"),
    ],
)
async def test_detection_by_the_files_present(
    tmp_path: Path, files: list[str], expected: RenderType
) -> None:
    write(tmp_path, dict.fromkeys(files, ""))

    assert await detect(tmp_path) == expected


# --- kustomize -----------------------------------------------------------------------------------

KUSTOMIZATION = {
    "base/kustomization.yaml": """\
        resources: [deployment.yaml]
        """,
    "base/deployment.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers:
              - name: web
                image: nginx
                envFrom: [{configMapRef: {name: settings}}]
        """,
    "overlay/kustomization.yaml": """\
        resources: [../base]
        namePrefix: prod-
        commonLabels: {tier: frontend}
        configMapGenerator:
        - name: settings
          literals: [MODE=production]
        """,
}


async def test_kustomization_is_built_by_kubectl_kustomize(tmp_path: Path) -> None:
    write(tmp_path, KUSTOMIZATION)

    manifests = await render(
        tmp_path / "overlay",
        RenderSpec(namespace="shop"),
        root=tmp_path,
        is_namespaced=scope_of,
        renderers=default_renderers(kubectl=KUBECTL),
    )

    objects = {m.ref.kind: m for m in manifests}
    assert set(objects) == {"ConfigMap", "Deployment"}
    config, deployment = objects["ConfigMap"], objects["Deployment"]
    assert config.ref.name.startswith("prod-settings-")  # prefixed, then the content hash
    assert config.body["data"] == {"MODE": "production"}
    assert deployment.ref == ObjectRef("apps", "Deployment", "shop", "prod-web")
    assert deployment.body["metadata"]["labels"] == {"tier": "frontend"}
    container = deployment.body["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": config.ref.name}}]
    assert deployment.origin == "overlay (kubectl kustomize), document 2"


async def test_kustomize_failure_names_tool_directory_and_its_complaint(tmp_path: Path) -> None:
    write(tmp_path, {"app/kustomization.yaml": "resources: [missing-file.yaml]\n"})

    with pytest.raises(RenderError) as caught:
        await KustomizeRenderer(kubectl=KUBECTL).render(
            tmp_path / "app", RenderSpec(), root=tmp_path
        )

    message = str(caught.value)
    assert message.startswith("kubectl kustomize failed rendering app (exit")
    assert "missing-file.yaml" in message


async def test_kustomize_failure_names_files_as_the_repository_does_not_our_cache(
    tmp_path: Path,
) -> None:
    checkout = tmp_path / "cache" / "trees" / "key" / ("a" * 40)
    write(
        checkout,
        {
            "overlays/demo/kustomization.yaml": "resources: [../../base]\npatches:\n"
            "  - path: settings.yaml\n",
            "overlays/demo/settings.yaml": 'data:\n  GREETING: "unterminated\n',
            "base/kustomization.yaml": "resources: []\n",
        },
    )

    with pytest.raises(RenderError) as caught:
        await KustomizeRenderer(kubectl=KUBECTL).render(
            checkout / "overlays" / "demo", RenderSpec(), root=checkout
        )

    message = str(caught.value)
    assert message.startswith("kubectl kustomize failed rendering overlays/demo (exit"), message
    assert "settings.yaml" in message
    assert str(tmp_path) not in message


async def test_an_explicit_tool_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"kustomization.yaml": "resources: []\n"})

    with pytest.raises(RenderError, match="is not an executable file"):
        await KustomizeRenderer(kubectl=tmp_path / "no-kubectl").render(
            tmp_path, RenderSpec(), root=tmp_path
        )


# --- helm ----------------------------------------------------------------------------------------

CHART = {
    "charts/shop/Chart.yaml": """\
        apiVersion: v2
        name: shop
        version: 0.1.0
        """,
    "charts/shop/values.yaml": """\
        replicas: 1
        greeting: from-chart
        color: from-chart
        """,
    "charts/shop/prod-values.yaml": """\
        replicas: 3
        greeting: from-file
        """,
    "charts/shop/templates/config.yaml": """\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {{ .Release.Name }}-config
        data:
          greeting: {{ .Values.greeting | quote }}
          color: {{ .Values.color | quote }}
          namespace: {{ .Release.Namespace | quote }}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {{ .Release.Name }}-second
        """,
    "charts/shop/templates/deployment.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {{ .Release.Name }}
        spec:
          replicas: {{ .Values.replicas }}
          selector: {matchLabels: {app: shop}}
          template:
            metadata: {labels: {app: shop}}
            spec: {containers: [{name: shop, image: nginx}]}
        """,
    "charts/shop/templates/tests/ping.yaml": """\
        apiVersion: v1
        kind: Pod
        metadata:
          name: {{ .Release.Name }}-ping
          annotations: {"helm.sh/hook": test}
        spec: {containers: [{name: ping, image: busybox}]}
        """,
    "charts/shop/crds/widgets.yaml": """\
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata: {name: widgets.example.com}
        spec:
          group: example.com
          names: {kind: Widget, plural: widgets, singular: widget}
          scope: Namespaced
          versions:
          - name: v1
            served: true
            storage: true
            schema: {openAPIV3Schema: {type: object}}
        """,
}


async def test_chart_is_rendered_by_helm_template_with_layered_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, CHART)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    spec = RenderSpec(
        release_name="front",
        namespace="store",
        values={"greeting": "inline"},
        values_files=("prod-values.yaml",),
    )

    manifests = await render(
        tmp_path / "charts" / "shop",
        spec,
        root=tmp_path,
        is_namespaced=scope_of,
        renderers={RenderType.HELM: helm()},
    )

    objects = by_name(manifests)
    assert set(objects) == {"widgets.example.com", "front-config", "front-second", "front"}
    assert objects["front-config"].body["data"] == {
        "greeting": "inline",  # inline values beat the values file ...
        "color": "from-chart",  # ... which only overrides what it names
        "namespace": "store",
    }
    assert objects["front"].body["spec"]["replicas"] == 3
    assert objects["front"].ref.namespace == "store"
    assert objects["widgets.example.com"].ref.namespace == ""  # CRDs from crds/ are included
    assert objects["front"].origin == "charts/shop/templates/deployment.yaml, document 1"
    assert objects["front-second"].origin == "charts/shop/templates/config.yaml, document 1"
    assert objects["widgets.example.com"].origin == "charts/shop/crds/widgets.yaml, document 1"
    assert list(private_tmp.iterdir()) == []  # the inline values file is gone


async def test_chart_is_detected_and_defaults_release_name_and_namespace(tmp_path: Path) -> None:
    write(tmp_path, CHART)

    manifests = await render(
        tmp_path / "charts" / "shop",
        RenderSpec(),
        renderers=default_renderers(helm=require("helm")),
    )

    objects = by_name(manifests)
    assert objects["shop-config"].body["data"]["namespace"] == "default"
    assert objects["shop-config"].ref.namespace == ""  # no target namespace: left to the caller


async def test_helm_failure_names_tool_directory_and_its_complaint(tmp_path: Path) -> None:
    write(tmp_path, CHART)
    write(tmp_path, {"charts/shop/templates/broken.yaml": "value: {{ .Values.nope | nosuchfunc }}"})

    with pytest.raises(RenderError) as caught:
        await helm().render(tmp_path / "charts" / "shop", RenderSpec(), root=tmp_path)

    message = str(caught.value)
    assert message.startswith("helm template failed rendering charts/shop (exit")
    assert "nosuchfunc" in message


@pytest.mark.parametrize(
    ("values_file", "problem"),
    [
        pytest.param("../../../etc/passwd", "is outside the repository", id="outside"),
        pytest.param("missing.yaml", "does not exist", id="missing"),
    ],
)
async def test_values_files_must_exist_inside_the_repository(
    tmp_path: Path, values_file: str, problem: str
) -> None:
    write(tmp_path, CHART)

    with pytest.raises(RenderError, match=problem):
        await helm().render(
            tmp_path / "charts" / "shop",
            RenderSpec(values_files=(values_file,)),
            root=tmp_path,
        )


async def test_helm_is_found_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, CHART)
    monkeypatch.setenv("AIORECONCILE_HELM", str(require("helm")))

    manifests = await HelmRenderer().render(
        tmp_path / "charts" / "shop", RenderSpec(), root=tmp_path
    )

    assert "shop" in by_name(manifests)


async def test_a_hung_tool_is_killed_at_the_deadline(tmp_path: Path) -> None:
    write(tmp_path, CHART)
    marker = tmp_path / "still-running"
    fake_helm = tmp_path / "slow-helm"
    fake_helm.write_text(f"#!/bin/sh\nsleep 1\ntouch {marker}\n")
    fake_helm.chmod(0o755)
    started = time.monotonic()

    with pytest.raises(RenderError, match=r"^helm template did not finish rendering .* 0\.3 s$"):
        await HelmRenderer(helm=fake_helm, timeout_s=0.3).render(
            tmp_path / "charts" / "shop", RenderSpec(), root=tmp_path
        )

    assert time.monotonic() - started < 1
    await anyio.sleep(1.5)
    assert not marker.exists()


# --- the last render's documents (KnownDocuments) ---------------------------------------------


def seen(manifests: list[Manifest]) -> list[tuple[ObjectRef, object, str]]:
    return [(m.ref, m.body, m.origin) for m in manifests]


async def rendered(
    directory: Path, spec: RenderSpec, known: KnownDocuments | None, *, root: Path
) -> list[Manifest]:
    renderers = default_renderers(helm=require("helm"), kubectl=KUBECTL)
    return await render(
        directory, spec, root=root, is_namespaced=scope_of, renderers=renderers, known=known
    )


async def test_helm_and_kustomize_output_is_parsed_only_where_its_text_changed(
    tmp_path: Path,
) -> None:
    """A real helm and kubectl kustomize print the same bytes for the same input, so a second
    render with the first's table parses nothing; a changed value parses its document only,
    and the objects are those a render without a table gives."""
    write(tmp_path, {**CHART, **KUSTOMIZATION})
    chart = RenderSpec(type=RenderType.HELM, release_name="front", namespace="store")
    overlay = RenderSpec(type=RenderType.KUSTOMIZE, namespace="shop")
    base = tmp_path / "base" / "deployment.yaml"
    for directory, spec in ((tmp_path / "charts" / "shop", chart), (tmp_path / "overlay", overlay)):
        first = await rendered(directory, spec, KnownDocuments(), root=tmp_path)
        crds = sum(m.ref.kind == "CustomResourceDefinition" for m in first)  # always parsed
        known = known_documents(first)
        assert seen(await rendered(directory, spec, known, root=tmp_path)) == seen(first)
        assert (known.parsed, known.reused) == (crds, len(first) - crds)

        known = known_documents(first)
        if spec is chart:
            spec = replace(spec, values={"greeting": "changed"})
        else:
            base.write_text(base.read_text().replace("image: nginx", "image: nginx:2"))
        again = await rendered(directory, spec, known, root=tmp_path)
        assert seen(again) == seen(await rendered(directory, spec, None, root=tmp_path))
        assert (known.parsed, known.reused) == (1 + crds, len(first) - 1 - crds)
