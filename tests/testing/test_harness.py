"""The harness's own logic: pins, cache paths, PKI, kubeconfig, process supervision."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from aioreconcile.testing import toolchain
from aioreconcile.testing.certificates import write_pki
from aioreconcile.testing.controlplane import write_kubeconfig
from aioreconcile.testing.processes import ManagedProcess, StartupError


def test_cache_path_is_keyed_by_pinned_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path))
    version = toolchain.pinned_versions()["kube-apiserver"]

    path = toolchain.binary_path("kube-apiserver")

    assert path == tmp_path / f"kube-apiserver-{version}" / "bin" / "kube-apiserver"


def test_build_script_and_python_agree_on_every_binary_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path))
    printed = subprocess.run(
        ["bash", str(toolchain.BUILD_SCRIPT), "--print-bin-dir"],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ,
    ).stdout

    from_script = dict(line.split("=", 1) for line in printed.splitlines())

    assert from_script == {c: str(toolchain.binary_path(c)) for c in toolchain.COMPONENTS}


def test_build_script_and_python_agree_on_the_node_group(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path))
    printed = subprocess.run(
        ["bash", str(toolchain.BUILD_SCRIPT), "--print-bin-dir", "node"],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ,
    ).stdout

    from_script = dict(line.split("=", 1) for line in printed.splitlines())

    assert from_script == {c: str(toolchain.binary_path(c)) for c in toolchain.NODE_COMPONENTS}
    assert toolchain.missing(["cni-plugins"]) == ["cni-plugins"]
    with pytest.raises(toolchain.ToolchainError, match=r"hack/testenv/build.sh node"):
        toolchain.require("kubelet")


def test_missing_binary_error_names_the_build_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path))

    with pytest.raises(toolchain.ToolchainError, match=r"hack/testenv/build.sh etcd"):
        toolchain.require("etcd")
    assert toolchain.missing(["etcd", "helm"]) == ["etcd", "helm"]


def test_unknown_component_is_rejected_by_the_build_script(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(toolchain.BUILD_SCRIPT), "kube-dns"],
        capture_output=True,
        text=True,
        env={**os.environ, toolchain.CACHE_ENV: str(tmp_path)},
    )
    assert result.returncode != 0
    assert "unknown component 'kube-dns'" in result.stderr


def test_admin_credential_is_in_system_masters_and_kubeconfig_embeds_it(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")

    kubeconfig = yaml.safe_load(
        write_kubeconfig(tmp_path / "kubeconfig", server="https://127.0.0.1:1", pki=pki).read_text()
    )

    admin = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())
    groups = [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert groups == ["system:masters"]
    (user,) = kubeconfig["users"]
    assert set(user["user"]) == {"client-certificate-data", "client-key-data"}
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1"
    assert oct(pki.admin_key.stat().st_mode & 0o777) == "0o600"


async def test_failed_start_reports_the_tail_of_the_component_log(tmp_path: Path) -> None:
    process = ManagedProcess(
        "broken", ["sh", "-c", "echo 'flag --nope unknown'; exit 3"], log_path=tmp_path / "log"
    )
    process.start()

    async def never() -> bool:
        return False

    with pytest.raises(StartupError, match=r"(?s)exited with code 3.*flag --nope unknown"):
        await process.wait_ready(never, timeout=10, what="ready")


async def test_stop_escalates_to_sigkill_for_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = ManagedProcess(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)",
        ],
        log_path=tmp_path / "log",
    )
    stubborn.start()

    async def printed_up() -> bool:
        return "up" in stubborn.log_tail()

    await stubborn.wait_ready(printed_up, timeout=10, what="up")
    await stubborn.stop(grace=0.3)

    assert not stubborn.running()
