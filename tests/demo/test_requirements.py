"""Without the tools it needs, the demo says which one and why, and starts nothing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_without_kubectl_the_demo_names_it_and_exits_1(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    git = shutil.which("git")
    assert git is not None
    (bin_dir / "git").symlink_to(git)

    result = subprocess.run(
        [sys.executable, "-m", "aioreconcile", "demo", "--dir", str(tmp_path / "clone")],
        env={**os.environ, "PATH": str(bin_dir), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "kubectl is not on PATH" in result.stdout
    assert not (tmp_path / "clone").exists()
    assert "your clone stays" not in result.stdout
