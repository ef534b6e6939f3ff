"""docs/crds.md's field tables are the CRDs' schema, regenerated, not a copy left to drift."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reference_tables_match_the_crd_files() -> None:
    checked = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "crd_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert checked.returncode == 0, checked.stderr
