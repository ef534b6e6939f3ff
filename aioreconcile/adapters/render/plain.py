"""A plain directory: every YAML and JSON file below it, as written."""

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import anyio.to_thread

from aioreconcile.adapters.render.tools import display
from aioreconcile.engine.manifests import KnownDocuments, parse_documents, parse_json
from aioreconcile.engine.model import Manifest, ManifestError
from aioreconcile.engine.sources import RenderError, RenderSpec

MANIFEST_SUFFIXES: Final = frozenset({".yaml", ".yml", ".json"})


@dataclass(frozen=True)
class PlainRenderer:
    """Reads ``*.yaml``, ``*.yml`` and ``*.json`` recursively, in sorted path order.

    Hidden files and directories are skipped: they hold tooling (``.git``, ``.github``,
    ``.pre-commit-config.yaml``), not objects. Symlinked directories are not followed, and a
    file whose real path is outside ``root`` is refused, so a repository cannot make the
    controller read its own files.
    """

    async def render(
        self, directory: Path, spec: RenderSpec, *, root: Path, known: KnownDocuments | None = None
    ) -> list[Manifest]:
        return await anyio.to_thread.run_sync(
            partial(read_directory, directory, root=root, known=known)
        )


def read_directory(
    directory: Path, *, root: Path, known: KnownDocuments | None = None
) -> list[Manifest]:
    """Blocking: meant for a worker thread. Paths are taken as resolved (absolute, no links)."""
    if not directory.is_dir():
        raise RenderError(f"{directory} is not a directory")
    manifests: list[Manifest] = []
    for path in _manifest_files(directory):
        origin = display(path, root=root)
        if not path.resolve().is_relative_to(root):
            raise ManifestError(f"{origin}: links outside the repository")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ManifestError(f"{origin}: not UTF-8 (byte {e.start})") from None
        if path.suffix == ".json":
            manifests.extend(parse_json(text, origin=origin))
        else:
            manifests.extend(parse_documents(text, origin=origin, known=known))
    return manifests


def _manifest_files(directory: Path) -> list[Path]:
    found: list[Path] = []
    for current, directories, files in os.walk(directory, onerror=_raise):
        directories[:] = [d for d in directories if not d.startswith(".")]
        found.extend(
            Path(current, name)
            for name in files
            if not name.startswith(".") and Path(name).suffix in MANIFEST_SUFFIXES
        )
    return sorted(found)


def _raise(error: OSError) -> None:
    raise RenderError(f"cannot read {error.filename}: {error.strerror}") from error
