"""``diff`` takes the arguments ``apply`` took and compares against the same sync."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aioreconcile.testing.pytest_plugin import Kube

pytestmark = pytest.mark.integration


def _cli(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioreconcile", *args, "--kubeconfig", str(kube.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_diff_with_the_inventory_apply_used_sees_no_change(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    source = tmp_path / "app"
    source.mkdir()
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": namespace},
        "data": {"k": "v"},
    }
    (source / "cm.yaml").write_text(yaml.safe_dump(body))
    inventory = ("--inventory", f"shop-{namespace}", "--inventory-namespace", namespace)
    applied = _cli(kube, "apply", str(source), "--prune", *inventory)
    assert applied.returncode == 0, applied.stderr

    same_sync = _cli(kube, "diff", str(source), *inventory)
    other_sync = _cli(kube, "diff", str(source))

    assert same_sync.returncode == 0, same_sync.stdout + same_sync.stderr
    assert same_sync.stdout == ""
    # Without it the directory's name is the sync, and the label would move to it.
    assert other_sync.returncode == 1, other_sync.stderr
    assert "aioreconcile.dev/sync" in other_sync.stdout


async def test_diff_with_prune_shows_what_apply_would_delete(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    source = tmp_path / "app"
    source.mkdir()
    for name in ("kept", "dropped"):
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"k": name},
        }
        (source / f"{name}.yaml").write_text(yaml.safe_dump(body))
    inventory = ("--inventory", f"shop-{namespace}", "--inventory-namespace", namespace)
    assert _cli(kube, "apply", str(source), "--prune", *inventory).returncode == 0
    (source / "dropped.yaml").unlink()

    with_prune = _cli(kube, "diff", str(source), "--prune", *inventory)
    without_prune = _cli(kube, "diff", str(source), *inventory)

    assert with_prune.returncode == 1, with_prune.stderr
    assert f"--- live/ConfigMap/{namespace}/dropped" in with_prune.stdout
    assert "+++ /dev/null" in with_prune.stdout
    assert "kept" not in with_prune.stdout
    assert without_prune.returncode == 0, without_prune.stdout + without_prune.stderr
