"""How a directory of a source becomes objects: the choices a sync makes about rendering."""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.model import JsonObject

KUSTOMIZATION_FILES: Final = ("kustomization.yaml", "kustomization.yml", "Kustomization")
CHART_FILE: Final = "Chart.yaml"


class RenderType(StrEnum):
    """Which tool turns a directory into objects; ``auto`` decides by the files present."""

    AUTO = "auto"
    PLAIN = "plain"
    KUSTOMIZE = "kustomize"
    HELM = "helm"


@dataclass(frozen=True)
class RenderSpec:
    """Everything rendering needs besides the directory itself.

    ``release_name``, ``values`` and ``values_files`` only matter to Helm; ``namespace`` is both
    Helm's ``--namespace`` and the namespace given to namespaced objects that name none.
    ``values`` override ``values_files``, which override the chart's own ``values.yaml``.
    """

    type: RenderType = RenderType.AUTO
    release_name: str | None = None
    namespace: str | None = None
    values: JsonObject = field(default_factory=dict)
    values_files: tuple[str, ...] = ()


class RenderError(AioreconcileError):
    """A directory could not be rendered at all: a tool failed, timed out or is missing.

    Defined here rather than beside the renderers so that the reactor, which must not import
    adapters, can still tell a failed render from a failed apply. Problems with a single object
    are ``ManifestError`` instead.
    """
