"""Rendering a directory of a source into objects: plain files, Kustomize or Helm.

The pure rules (parsing, lists, namespaces, duplicates) live in ``aioreconcile.engine.manifests``;
this package reads files and drives the tools, off the event loop, each with a deadline.
"""

from aioreconcile.adapters.render.helm import HelmRenderer
from aioreconcile.adapters.render.kustomize import KustomizeRenderer
from aioreconcile.adapters.render.plain import PlainRenderer
from aioreconcile.adapters.render.rendering import Renderer, default_renderers, detect, render
from aioreconcile.engine.sources import RenderError, RenderSpec, RenderType

__all__ = [
    "HelmRenderer",
    "KustomizeRenderer",
    "PlainRenderer",
    "RenderError",
    "RenderSpec",
    "RenderType",
    "Renderer",
    "default_renderers",
    "detect",
    "render",
]
