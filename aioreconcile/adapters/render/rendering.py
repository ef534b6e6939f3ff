"""Which renderer a directory needs, and the whole render: tool, namespaces, duplicates."""

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Protocol

import anyio.to_thread

from aioreconcile.adapters.render.helm import HelmRenderer
from aioreconcile.adapters.render.kustomize import KustomizeRenderer
from aioreconcile.adapters.render.plain import PlainRenderer
from aioreconcile.adapters.render.tools import DEFAULT_TIMEOUT_S
from aioreconcile.engine.manifests import (
    KnownDocuments,
    NamespaceScope,
    check_unique,
    default_namespace,
)
from aioreconcile.engine.model import Manifest, ObjectRef
from aioreconcile.engine.sources import (
    CHART_FILE,
    KUSTOMIZATION_FILES,
    RenderError,
    RenderSpec,
    RenderType,
)


class Renderer(Protocol):
    """Turns one directory into objects, in a deterministic order.

    ``directory`` and ``root`` arrive resolved (absolute, links followed); ``root`` is the
    repository checkout, which bounds what may be read and what origins are relative to.
    """

    async def render(
        self, directory: Path, spec: RenderSpec, *, root: Path, known: KnownDocuments | None = None
    ) -> list[Manifest]: ...


def default_renderers(
    *,
    helm: Path | None = None,
    kustomize: Path | None = None,
    kubectl: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[RenderType, Renderer]:
    """A renderer per type; tools not given here are looked up when a render needs them."""
    return {
        RenderType.PLAIN: PlainRenderer(),
        RenderType.KUSTOMIZE: KustomizeRenderer(
            kustomize=kustomize, kubectl=kubectl, timeout_s=timeout_s
        ),
        RenderType.HELM: HelmRenderer(helm=helm, timeout_s=timeout_s),
    }


async def detect(directory: Path) -> RenderType:
    """A kustomization file means Kustomize, else ``Chart.yaml`` means Helm, else plain files."""
    return await anyio.to_thread.run_sync(_detect, directory)


async def render(
    directory: Path,
    spec: RenderSpec,
    *,
    root: Path | None = None,
    is_namespaced: NamespaceScope | None = None,
    renderers: Mapping[RenderType, Renderer] | None = None,
    known: KnownDocuments | None = None,
) -> list[Manifest]:
    """The objects ``directory`` stands for, ready to plan.

    ``root`` (default: ``directory``) is the repository checkout: nothing outside it is read,
    and origins in errors are relative to it. ``is_namespaced`` comes from discovery; without
    it no namespace is defaulted (every kind counts as unknown, decided later). ``known``: the
    documents of the last render, not parsed again when their text is the same
    (``engine.manifests.KnownDocuments``; it counts what was parsed). Raises
    RenderError when the directory cannot be rendered, ManifestError when an object is unusable.
    """
    chosen, checkout = await anyio.to_thread.run_sync(partial(_resolve, directory, root=root))
    render_type = await detect(chosen) if spec.type is RenderType.AUTO else spec.type
    renderer = (renderers if renderers is not None else default_renderers()).get(render_type)
    if renderer is None:
        raise RenderError(f"cannot render {chosen}: no renderer for {render_type}")
    manifests = await renderer.render(chosen, spec, root=checkout, known=known)
    manifests = default_namespace(
        manifests, spec.namespace, is_namespaced=is_namespaced or _scope_unknown
    )
    check_unique(manifests)
    return manifests


def _resolve(directory: Path, *, root: Path | None) -> tuple[Path, Path]:
    resolved = directory.resolve()
    resolved_root = root.resolve() if root is not None else resolved
    if not resolved.is_relative_to(resolved_root):
        raise RenderError(f"{directory} is outside the repository {root}")
    if not resolved.is_dir():
        raise RenderError(f"{directory} is not a directory")
    return resolved, resolved_root


def _detect(directory: Path) -> RenderType:
    if any((directory / name).is_file() for name in KUSTOMIZATION_FILES):
        return RenderType.KUSTOMIZE
    if (directory / CHART_FILE).is_file():
        return RenderType.HELM
    return RenderType.PLAIN


def _scope_unknown(ref: ObjectRef) -> bool | None:
    return None
