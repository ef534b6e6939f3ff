"""Whether a new commit can change what a sync renders: judged from the paths that changed.

A push to a repository holding several syncs changes, most of the time, the files of one of
them. Rendering and applying the others again would cost their whole render and a dry-run per
object to learn that nothing changed (a 1,000-object sync: 1.6 s per push). Instead, the paths
``git diff --name-only <rendered> <head>`` lists are compared with the files the sync reads:

- plain: everything under its path;
- helm: the chart directory, its ``values_files`` and local (``file://``) dependencies named in
  ``Chart.yaml``;
- kustomize: its path and, followed through every kustomization file they hold, every local
  path a kustomization names (``../base``, a patch or a generator's file outside the path).

The rule is conservative: anything that cannot be resolved (a remote base, a kustomization or
chart that does not parse, a reference leaving the repository, a symbolic link among the
inputs, an unknown diff) counts as affected, so a skip can only be wrong if git's diff is. Flux
renders every Kustomization on each new revision of its source; Argo CD's
``argocd.argoproj.io/manifest-generate-paths`` annotation is the same idea as this module,
declared by the user instead of derived from the kustomizations.
"""

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import yaml

from aioreconcile.engine.sources import CHART_FILE, KUSTOMIZATION_FILES, RenderSpec, RenderType

ReadFile = Callable[[str], str | None]
"""The text of a repository file at the new head (path relative to the repository root), or
None when it is not there (or is not a regular file)."""

_KUSTOMIZE_INFLATES: Final = ("helmCharts", "helmChartInflationGenerator", "helmGlobals")
_REMOTE_PREFIXES: Final = ("git@", "git::", "github.com/", "gitlab.com/", "bitbucket.org/")


@dataclass(frozen=True)
class TreeDiff:
    """What changed between two commits, and the symbolic links of the newer one."""

    changed: tuple[str, ...]
    symlinks: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Inputs:
    """The paths a sync reads (each a file or a directory, relative to the repository root),
    or why they cannot be known (``unknown``): then every change affects the sync."""

    paths: frozenset[str]
    unknown: str | None = None


@dataclass(frozen=True)
class ChangeVerdict:
    affected: bool
    reason: str


def normalise(path: str) -> str | None:
    """A sync's path relative to the repository root ("." for all of it); None when it leaves
    the repository."""
    joined = posixpath.normpath(path.strip().lstrip("/") or ".")
    if joined == ".." or joined.startswith("../"):
        return None
    return joined


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or inside it ("." holds everything)."""
    return prefix == "." or path == prefix or path.startswith(prefix + "/")


def inputs(path: str, render: RenderSpec, *, read: ReadFile) -> Inputs:
    """The files a sync with this path and render spec reads at the commit ``read`` shows."""
    root = normalise(path)
    if root is None:
        return Inputs(frozenset(), unknown=f"the path {path!r} leaves the repository")
    kind = render.type
    if kind is RenderType.AUTO:
        kind = _detect(root, read)
    if kind is RenderType.KUSTOMIZE:
        return _kustomize_inputs(root, read)
    if kind is RenderType.HELM:
        return _helm_inputs(root, render, read)
    return Inputs(frozenset({root}))


def judge(diff: TreeDiff | None, path: str, render: RenderSpec, *, read: ReadFile) -> ChangeVerdict:
    """Whether the sync must render and apply again; ``diff`` None: the commits could not be
    compared (the older one is not in the cache), so it must."""
    if diff is None:
        return ChangeVerdict(True, "the applied commit cannot be compared with the head")
    needed = inputs(path, render, read=read)
    if needed.unknown is not None:
        return ChangeVerdict(True, needed.unknown)
    for link in sorted(diff.symlinks):
        if any(under(link, p) or under(p, link) for p in needed.paths):
            return ChangeVerdict(True, f"{link} is a symbolic link among the files it reads")
    for changed in diff.changed:
        for p in needed.paths:
            # A changed ancestor too: a directory of the path replaced by a file or a link.
            if under(changed, p) or under(p, changed):
                return ChangeVerdict(True, f"{changed} changed")
    shown = normalise(path) or path
    extra = len(needed.paths) - 1
    also = f" nor in the {extra} other path(s) it reads" if extra > 0 else ""
    return ChangeVerdict(False, f"no file under {shown} changed{also}")


def _join(directory: str, name: str) -> str:
    return (
        posixpath.normpath(posixpath.join(directory, name))
        if directory != "."
        else (posixpath.normpath(name))
    )


def _detect(root: str, read: ReadFile) -> RenderType:
    """``adapters.render.rendering.detect``'s rule, on the files ``read`` shows."""
    if any(read(_join(root, name)) is not None for name in KUSTOMIZATION_FILES):
        return RenderType.KUSTOMIZE
    if read(_join(root, CHART_FILE)) is not None:
        return RenderType.HELM
    return RenderType.PLAIN


def _leaves(path: str) -> bool:
    return path == ".." or path.startswith("../")


def _helm_inputs(root: str, render: RenderSpec, read: ReadFile) -> Inputs:
    paths = {root}
    for name in render.values_files:
        joined = _join(root, name)
        if _leaves(joined) or name.startswith("/"):
            return Inputs(frozenset(), unknown=f"values file {name!r} is outside the repository")
        paths.add(joined)
    chart = read(_join(root, CHART_FILE))
    if chart is not None:
        try:
            doc = yaml.safe_load(chart)
        except yaml.YAMLError:
            return Inputs(frozenset(), unknown=f"{_join(root, CHART_FILE)} does not parse")
        dependencies = doc.get("dependencies") if isinstance(doc, dict) else None
        for dependency in dependencies if isinstance(dependencies, list) else []:
            repository = dependency.get("repository") if isinstance(dependency, dict) else None
            if isinstance(repository, str) and repository.startswith("file://"):
                joined = _join(root, repository.removeprefix("file://"))
                if _leaves(joined):
                    return Inputs(
                        frozenset(), unknown=f"chart dependency {repository!r} is outside"
                    )
                paths.add(joined)
    return Inputs(frozenset(paths))


def _kustomize_inputs(root: str, read: ReadFile) -> Inputs:
    """Follow every kustomization reachable from ``root``. Every string of a kustomization
    that resolves outside the directories already known is taken as a path it reads (a
    directory, then followed, or a file): an image name or a label value only adds a path that
    no change will ever touch, which costs nothing, while a reference missed would skip a
    sync that changed."""
    paths = {root}
    pending = [root]
    visited: set[str] = set()
    while pending:
        directory = pending.pop()
        if directory in visited:
            continue
        visited.add(directory)
        found = [(name, read(_join(directory, name))) for name in KUSTOMIZATION_FILES]
        texts = [(name, text) for name, text in found if text is not None]
        if not texts:
            continue  # a plain directory (or a file) named as a resource
        name, text = texts[0]
        where = _join(directory, name)
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            return Inputs(frozenset(), unknown=f"{where} does not parse")
        if doc is None:
            continue
        if not isinstance(doc, dict):
            return Inputs(frozenset(), unknown=f"{where} is not a mapping")
        for key in _KUSTOMIZE_INFLATES:
            if key in doc:
                return Inputs(frozenset(), unknown=f"{where} inflates Helm charts ({key})")
        for value in _strings(doc):
            if "\n" in value or not value.strip():
                continue  # inline content (a patch), not a path
            if "://" in value or value.startswith(_REMOTE_PREFIXES) or "?ref=" in value:
                return Inputs(frozenset(), unknown=f"{where} reads {value!r} from elsewhere")
            candidates = [value, value.partition("=")[2]] if "=" in value else [value]
            for candidate in candidates:
                if not candidate or candidate.startswith("/"):
                    continue  # a JSON pointer or field path; kustomize reads no absolute path
                joined = _join(directory, candidate)
                if _leaves(joined):
                    return Inputs(
                        frozenset(), unknown=f"{where} reads {value!r} outside the repository"
                    )
                if not any(under(joined, p) for p in paths):
                    paths.add(joined)
                # Followed even inside a known directory: its kustomization may name ../x.
                pending.append(joined)
    return Inputs(frozenset(paths))


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
