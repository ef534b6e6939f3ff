"""helm template / lint of charts/aioreconcile with the testenv's helm, values given as JSON."""

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from aioreconcile.testing.toolchain import require

CHART = Path(__file__).resolve().parents[2] / "charts" / "aioreconcile"
NAMESPACE = "gitops"
RELEASE = "r"


def helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(require("helm")), *args]
    if values is not None:
        argv += ["--values", "-"]
    return subprocess.run(
        argv, input=json.dumps(values or {}), capture_output=True, text=True, timeout=60
    )


def render(
    values: dict[str, Any], *, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    result = helm("template", release, str(CHART), "--namespace", namespace, values=values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
