"""`aioreconcile testenv up` as a person uses it: exports, kubectl works, nothing left behind."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _start_up(
    tmp_path: Path, *extra: str, expect: str = "KUBECONFIG"
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "aioreconcile", "testenv", "up", "--dir", str(tmp_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    exports: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while expect not in exports and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        name, _, value = line.removeprefix("export ").strip().partition("=")
        exports[name] = value
    if expect not in exports:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"testenv up printed no {expect} export; stderr:\n{err}")
    return process, exports


def _component_pids(workdir: Path, *, besides: int) -> list[int]:
    """Processes whose command line names ``workdir`` (etcd, kube-apiserver), except ``besides``."""
    found = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split() if int(pid) != besides]


def test_up_prints_kubeconfig_that_kubectl_can_use_and_sigterm_cleans_up(tmp_path: Path) -> None:
    process, exports = _start_up(tmp_path)
    try:
        listed = subprocess.run(
            ["kubectl", "--kubeconfig", exports["KUBECONFIG"], "get", "namespaces", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listed.returncode == 0, listed.stderr
        assert "namespace/default" in listed.stdout.split()
        assert _component_pids(tmp_path, besides=process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)

    assert code == 0
    assert _component_pids(tmp_path, besides=process.pid) == []


def test_components_die_with_a_killed_testenv_process(tmp_path: Path) -> None:
    process, _ = _start_up(tmp_path)
    pids = _component_pids(tmp_path, besides=process.pid)
    assert len(pids) >= 2  # etcd and kube-apiserver

    os.kill(process.pid, signal.SIGKILL)  # no cleanup code runs: the kernel must do it
    process.wait(timeout=10)

    deadline = time.monotonic() + 10
    while _component_pids(tmp_path, besides=process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _component_pids(tmp_path, besides=process.pid) == []


def test_up_with_jaeger_exports_a_working_otlp_endpoint_and_query_url(tmp_path: Path) -> None:
    process, exports = _start_up(tmp_path, "--jaeger", expect="JAEGER_URL")
    try:
        with urllib.request.urlopen(f"{exports['JAEGER_URL']}/api/services", timeout=10) as r:
            assert r.status == 200
        # An empty OTLP/HTTP export request is accepted by a live receiver.
        request = urllib.request.Request(
            f"{exports['OTEL_EXPORTER_OTLP_ENDPOINT']}/v1/traces",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    assert _component_pids(tmp_path, besides=process.pid) == []
