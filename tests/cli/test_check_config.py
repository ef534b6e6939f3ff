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
    assert (
        "receiver github: github at POST /hooks/github, triggers syncs infra"
        " and syncs labelled team=shop"
    ) in accepted.stdout


def test_check_config_prints_source_urls_without_their_token(tmp_path: Path) -> None:
    token = "ghp_ch3ck-c0nfig-t0ken"
    config = tmp_path / "config.yaml"
    config.write_text(
        "syncs:\n  - name: a\n    source:\n"
        f"      url: https://x-access-token:{token}@github.com/acme/app.git\n"
    )

    result = subprocess.run(
        [sys.executable, "-m", "aioreconcile", "check-config", str(config)],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr
    assert "sync a: https://github.com/acme/app.git main" in result.stdout
    assert token not in result.stdout + result.stderr


def test_check_config_refuses_a_url_that_git_would_take_for_an_option(tmp_path: Path) -> None:
    marker = tmp_path / "x"
    config = tmp_path / "config.yaml"
    config.write_text(
        f'syncs:\n  - name: a\n    source:\n      url: "--upload-pack=touch {marker}"\n'
    )

    result = subprocess.run(
        [sys.executable, "-m", "aioreconcile", "check-config", str(config)],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 1
    assert f"{config}: syncs[0].source.url: " in result.stderr
    assert "'-'" in result.stderr
    assert not marker.exists()
