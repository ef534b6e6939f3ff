"""`aioreconcile check-config` shows what a sync waits for and whom it acts as, resolved."""

import subprocess
import sys
from pathlib import Path

CONFIG = """\
syncs:
  - name: shop
    source: {url: https://git.example.com/org/shop.git}
    targetNamespace: shop
    serviceAccount: deployer
    wait: true
    timeout: 90s
  - name: ambiguous
    source: {url: https://git.example.com/org/other.git}
    serviceAccount: deployer
"""


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioreconcile", "check-config", str(path)],
        capture_output=True,
        text=True,
    )


def test_resolved_account_and_wait_are_printed(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(CONFIG.split("  - name: ambiguous")[0])

    accepted = check(good)

    assert accepted.returncode == 0, accepted.stderr
    assert "  waits up to 90 s for its objects to be healthy" in accepted.stdout
    assert "  acts as system:serviceaccount:shop:deployer (impersonated)" in accepted.stdout


def test_an_account_without_a_namespace_is_refused_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG)

    rejected = check(bad)

    assert rejected.returncode == 1
    assert f"{bad}: syncs[1].serviceAccount: 'deployer' names no namespace" in rejected.stderr
