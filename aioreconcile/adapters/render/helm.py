"""A Helm chart, rendered by ``helm template`` with the sync's values."""

import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread

from aioreconcile.adapters.render.tools import DEFAULT_TIMEOUT_S, display, find_tool, run_tool
from aioreconcile.engine.manifests import KnownDocuments, parse_documents
from aioreconcile.engine.model import JsonObject, Manifest
from aioreconcile.engine.sources import RenderError, RenderSpec

HELM_ENV: Final = "AIORECONCILE_HELM"
DEFAULT_NAMESPACE: Final = "default"
_SOURCE_COMMENT: Final = "# Source: "
_DOCUMENT_WITH_SOURCE: Final = re.compile(r"^---[ \t]*\n(?=# Source: )", re.MULTILINE)


@dataclass(frozen=True)
class HelmRenderer:
    """Runs ``helm template`` on a chart directory.

    helm is the one given here, else ``$AIORECONCILE_HELM``, else the one on PATH.

    - ``--include-crds``: ``helm template`` leaves ``crds/`` out because ``helm install`` applies
      it separately; here we are the installer, so the CRDs must be among the objects.
    - ``--skip-tests``: test hooks are Pods for ``helm test``, not part of the release. Other
      hooks are rendered and applied like any object.
    - ``--namespace`` is always passed (``default`` when the sync names none), so the output
      never depends on the namespace of whatever kubeconfig the controller happens to have.
    - Values: the chart's ``values.yaml``, then ``values_files`` (relative to the chart, and
      inside the repository), then the inline ``values``, each overriding the one before.
    - The release name defaults to the chart directory's name.
    """

    helm: Path | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    async def render(
        self, directory: Path, spec: RenderSpec, *, root: Path, known: KnownDocuments | None = None
    ) -> list[Manifest]:
        helm = find_tool("helm", explicit=self.helm, env=HELM_ENV)
        if helm is None:
            raise RenderError(
                f"cannot render {directory}: helm not found (set {HELM_ENV} or put it on PATH)"
            )
        values_files = await anyio.to_thread.run_sync(
            partial(_values_files, directory, spec.values_files, root=root)
        )
        async with _inline_values_file(spec.values) as inline:
            argv = [
                str(helm),
                "template",
                "--include-crds",
                "--skip-tests",
                f"--namespace={spec.namespace or DEFAULT_NAMESPACE}",
                *(f"--values={path}" for path in [*values_files, *inline]),
                "--",  # a release name starting with "-" must not become a flag
                spec.release_name or directory.name,
                str(directory),
            ]
            output = await run_tool(
                argv,
                tool="helm template",
                directory=directory,
                timeout_s=self.timeout_s,
                root=root,
            )
        return await anyio.to_thread.run_sync(
            partial(parse_helm_output, output, directory=directory, root=root, known=known)
        )


def parse_helm_output(
    text: str, *, directory: Path, root: Path, known: KnownDocuments | None = None
) -> list[Manifest]:
    """The objects helm printed, each with the template it came from as its origin.

    helm heads every document with ``# Source: <chart>/templates/x.yaml``; mapping that back
    into the repository makes errors point at the template, not at a line of helm's output.
    """
    chart = display(directory, root=root)
    manifests: list[Manifest] = []
    for chunk in _DOCUMENT_WITH_SOURCE.split(text):
        first_line = chunk.partition("\n")[0]
        if first_line.startswith(_SOURCE_COMMENT):
            inside_chart = first_line.removeprefix(_SOURCE_COMMENT).partition("/")[2]
            origin = f"{chart}/{inside_chart}"
        else:
            origin = f"{chart} (helm template)"
        manifests.extend(parse_documents(chunk, origin=origin, known=known))
    return manifests


def _values_files(directory: Path, names: Sequence[str], *, root: Path) -> list[Path]:
    """Blocking. Values files must stay inside the repository: a sync must not be able to
    read the controller's own files into a chart."""
    paths: list[Path] = []
    for name in names:
        path = (directory / name).resolve()
        if not path.is_relative_to(root):
            raise RenderError(f"values file {name!r} of {directory} is outside the repository")
        if not path.is_file():
            raise RenderError(f"values file {name!r} of {directory} does not exist")
        paths.append(path)
    return paths


@asynccontextmanager
async def _inline_values_file(values: JsonObject) -> AsyncIterator[list[Path]]:
    """The inline values as a private (0600) temporary file, removed afterwards: they may hold
    secrets, and command-line ``--set`` would show them in the process list."""
    if not values:
        yield []
        return
    path = await anyio.to_thread.run_sync(_write_values, values)
    try:
        yield [path]
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial(path.unlink, missing_ok=True))


def _write_values(values: JsonObject) -> Path:
    try:
        text = json.dumps(values)
    except (TypeError, ValueError) as e:
        raise RenderError(f"inline helm values are not JSON: {e}") from None
    descriptor, name = tempfile.mkstemp(prefix="aioreconcile-values-", suffix=".json")
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    return Path(name)
