"""A Kustomize overlay, built by a ``kustomize`` binary or by ``kubectl kustomize``."""

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import anyio.to_thread

from aioreconcile.adapters.render.tools import DEFAULT_TIMEOUT_S, display, find_tool, run_tool
from aioreconcile.engine.manifests import KnownDocuments, parse_documents
from aioreconcile.engine.model import Manifest
from aioreconcile.engine.sources import RenderError, RenderSpec

KUSTOMIZE_ENV: Final = "AIORECONCILE_KUSTOMIZE"


@dataclass(frozen=True)
class KustomizeRenderer:
    """Runs ``kustomize build DIR``, or ``kubectl kustomize DIR`` when there is no kustomize.

    A binary given here wins over one found in ``$AIORECONCILE_KUSTOMIZE`` or on PATH; among
    those found, kustomize wins over kubectl, as it is usually the newer Kustomize. Kustomize's
    default load restrictor stays on: files outside DIR's tree are refused.
    """

    kustomize: Path | None = None
    kubectl: Path | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    async def render(
        self, directory: Path, spec: RenderSpec, *, root: Path, known: KnownDocuments | None = None
    ) -> list[Manifest]:
        argv, tool = self._command(directory)
        output = await run_tool(
            argv, tool=tool, directory=directory, timeout_s=self.timeout_s, root=root
        )
        origin = f"{display(directory, root=root)} ({tool})"
        return await anyio.to_thread.run_sync(
            partial(parse_documents, output, origin=origin, known=known)
        )

    def _command(self, directory: Path) -> tuple[list[str], str]:
        """An explicit binary beats one found by looking; kustomize beats kubectl."""
        if self.kustomize is not None or self.kubectl is None:
            kustomize = find_tool("kustomize", explicit=self.kustomize, env=KUSTOMIZE_ENV)
            if kustomize is not None:
                return [str(kustomize), "build", str(directory)], "kustomize build"
        kubectl = find_tool("kubectl", explicit=self.kubectl)
        if kubectl is not None:
            return [str(kubectl), "kustomize", str(directory)], "kubectl kustomize"
        raise RenderError(
            f"cannot render {directory}: neither kustomize nor kubectl found "
            f"(set {KUSTOMIZE_ENV} or put one of them on PATH)"
        )
