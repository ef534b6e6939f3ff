"""Whether a commit's changed paths affect a sync (engine.changes.judge): table-driven."""

import pytest

from aioreconcile.engine.changes import TreeDiff, inputs, judge
from aioreconcile.engine.sources import RenderSpec, RenderType

PLAIN = RenderSpec(type=RenderType.PLAIN)
AUTO = RenderSpec()
KUSTOMIZE = RenderSpec(type=RenderType.KUSTOMIZE)
HELM = RenderSpec(type=RenderType.HELM, values_files=("../values/prod.yaml",))

OVERLAY = """\
resources:
  - ../../base
  - extra.yaml
patches:
  - path: ../../patches/replicas.yaml
  - patch: |-
      - op: replace
        path: /spec/replicas
        value: 3
configMapGenerator:
  - name: settings
    files:
      - app.conf=../../config/app.conf
images:
  - name: nginx
    newName: registry.example.com/nginx
"""
BASE = "resources:\n  - deployment.yaml\n  - ../common\n"
COMMON = "resources:\n  - service.yaml\n"
FILES = {
    "apps/prod/kustomization.yaml": OVERLAY,
    "base/kustomization.yaml": BASE,
    "common/kustomization.yaml": COMMON,
    "charts/web/Chart.yaml": "name: web\ndependencies:\n  - name: lib\n    repository: file://../lib\n",
    "auto/kust/Kustomization": "resources:\n  - ../../base\n",
    "auto/chart/Chart.yaml": "name: chart\n",
    "remote/kustomization.yaml": "resources:\n  - github.com/org/repo//deploy?ref=v1\n",
    "broken/kustomization.yaml": "resources: [unclosed\n",
    "escape/kustomization.yaml": "resources:\n  - ../../outside\n",
    "inflate/kustomization.yaml": "helmCharts:\n  - name: x\n    repo: https://x\n",
    "inner/kustomization.yaml": "resources:\n  - sub\n",
    "inner/sub/kustomization.yaml": "resources:\n  - ../../base\n",
}

CASES = [
    # (id, path, render, changed, symlinks, affected, reason contains)
    (
        "plain: a file under its path",
        "apps/a",
        PLAIN,
        ["apps/a/cm.yaml"],
        (),
        True,
        "apps/a/cm.yaml",
    ),
    ("plain: another sync's path", "apps/a", PLAIN, ["apps/b/cm.yaml"], (), False, "apps/a"),
    ("plain: a sibling with the same prefix", "apps/a", PLAIN, ["apps/ab/cm.yaml"], (), False, ""),
    ("plain: a deep file", "apps/a", PLAIN, ["apps/a/x/y/z.yaml"], (), True, ""),
    ("plain: its directory replaced by a file", "apps/a", PLAIN, ["apps"], (), True, ""),
    ("plain: nothing changed", "apps/a", PLAIN, [], (), False, "no file under apps/a"),
    ("path '.': any file", ".", PLAIN, ["README.md"], (), True, "README.md"),
    ("path './' normalised", "./", AUTO, ["x/y.yaml"], (), True, ""),
    ("path with slashes normalised", "/apps/a/", PLAIN, ["apps/b/x.yaml"], (), False, ""),
    ("path leaving the repository", "../x", PLAIN, [], (), True, "leaves the repository"),
    ("kustomize: ../base changed", "apps/prod", KUSTOMIZE, ["base/deployment.yaml"], (), True, ""),
    (
        "kustomize: base of base changed",
        "apps/prod",
        KUSTOMIZE,
        ["common/service.yaml"],
        (),
        True,
        "",
    ),
    (
        "kustomize: patch file outside",
        "apps/prod",
        KUSTOMIZE,
        ["patches/replicas.yaml"],
        (),
        True,
        "",
    ),
    ("kustomize: generator file k=v", "apps/prod", KUSTOMIZE, ["config/app.conf"], (), True, ""),
    (
        "kustomize: unrelated file",
        "apps/prod",
        KUSTOMIZE,
        ["apps/dev/x.yaml", "other/y"],
        (),
        False,
        "other path",
    ),
    (
        "kustomize: inline patch is no path",
        "apps/prod",
        KUSTOMIZE,
        ["spec/replicas"],
        (),
        False,
        "",
    ),
    (
        "kustomize: nested kustomization's ../base",
        "inner",
        KUSTOMIZE,
        ["base/deployment.yaml"],
        (),
        True,
        "",
    ),
    ("auto detects Kustomization", "auto/kust", AUTO, ["base/kustomization.yaml"], (), True, ""),
    ("auto without kustomization is plain", "base2", AUTO, ["base/x.yaml"], (), False, ""),
    ("kustomize: remote base", "remote", KUSTOMIZE, ["elsewhere"], (), True, "from elsewhere"),
    ("kustomize: does not parse", "broken", KUSTOMIZE, ["elsewhere"], (), True, "does not parse"),
    ("kustomize: leaves the repository", "escape", KUSTOMIZE, ["elsewhere"], (), True, "outside"),
    ("kustomize: helm inflation", "inflate", KUSTOMIZE, ["elsewhere"], (), True, "Helm"),
    (
        "helm: values file outside the chart",
        "charts/web",
        HELM,
        ["charts/values/prod.yaml"],
        (),
        True,
        "",
    ),
    ("helm: file:// dependency", "charts/web", HELM, ["charts/lib/templates/x.yaml"], (), True, ""),
    ("helm: another chart", "charts/web", HELM, ["charts/other/values.yaml"], (), False, ""),
    (
        "auto detects a chart",
        "auto/chart",
        RenderSpec(values_files=("v.yaml",)),
        ["auto/chart/v.yaml"],
        (),
        True,
        "",
    ),
    (
        "a symlink under the path",
        "apps/a",
        PLAIN,
        ["other"],
        ("apps/a/link",),
        True,
        "symbolic link",
    ),
    ("the path through a symlink", "apps/a", PLAIN, ["other"], ("apps",), True, "symbolic link"),
    ("a symlink elsewhere", "apps/a", PLAIN, ["other"], ("docs/link",), False, ""),
]


@pytest.mark.parametrize(
    ("path", "render", "changed", "symlinks", "affected", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_a_sync_is_affected_only_by_changes_to_what_it_reads(
    path: str,
    render: RenderSpec,
    changed: list[str],
    symlinks: tuple[str, ...],
    affected: bool,
    reason: str,
) -> None:
    verdict = judge(TreeDiff(tuple(changed), frozenset(symlinks)), path, render, read=FILES.get)
    assert verdict.affected is affected, verdict.reason
    assert reason in verdict.reason


def test_commits_that_cannot_be_compared_affect_every_sync() -> None:
    verdict = judge(None, "apps/a", PLAIN, read=FILES.get)
    assert verdict.affected
    assert "cannot be compared" in verdict.reason


def test_an_overlay_reads_its_bases_patches_and_generator_files() -> None:
    found = inputs("apps/prod", KUSTOMIZE, read=FILES.get)
    assert found.unknown is None
    assert {
        "apps/prod",
        "base",
        "common",
        "patches/replicas.yaml",
        "config/app.conf",
    } <= found.paths
