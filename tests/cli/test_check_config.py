"""`aioreconcile check-config` as a person runs it."""

import subprocess
import sys
from pathlib import Path

from tests.engine.test_configuration import FULL


def test_check_config_command_names_file_and_field(tmp_path: Path) -> None:

    bad = tmp_path / "bad.yaml"
    bad.write_text("syncs:\n  - name: a\n    source: {ref: main}\n")
    good = tmp_path / "good.yaml"
    good.write_text(FULL)

    rejected = subprocess.run(
        [sys.executable, "-m", "aioreconcile", "check-config", str(bad)],
        capture_output=True,
        text=True,
    )
    accepted = subprocess.run(
        [sys.executable, "-m", "aioreconcile", "check-config", str(good)],
        capture_output=True,
        text=True,
    )

    assert rejected.returncode == 1
    assert f"{bad}: syncs[0].source.url: required" in rejected.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert "receiver github: github at POST /hooks/github" in accepted.stdout
