"""Reaching the API server from a kubeconfig or in-cluster, without kubernetes_asyncio."""

import base64
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from aioreconcile.adapters.kube import access
from aioreconcile.adapters.kube.access import KubeconfigError, from_kubeconfig, in_cluster
from aioreconcile.testing.certificates import write_pki


def kubeconfig(
    tmp_path: Path, user: dict[str, Any], *, cluster: dict[str, Any] | None = None
) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": "main", "context": {"cluster": "c", "user": "u"}},
            {"name": "other", "context": {"cluster": "c", "user": "missing"}},
        ],
        "current-context": "main",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(document))
    return path


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_embedded_client_certificate_and_ca_build_a_tls_context(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    path = kubeconfig(
        tmp_path,
        {"client-certificate-data": b64(pki.admin_cert), "client-key-data": b64(pki.admin_key)},
        cluster={
            "server": "https://127.0.0.1:6443/",
            "certificate-authority-data": b64(pki.ca_cert),
        },
    )

    reached = from_kubeconfig(path)

    assert reached.host == "https://127.0.0.1:6443"
    assert isinstance(reached.context, ssl.SSLContext)
    assert reached.context.verify_mode is ssl.CERT_REQUIRED
    assert not list(Path("/tmp").glob("aioreconcile-cert-*"))  # the key never stays on disk


def test_relative_certificate_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    write_pki(tmp_path / "pki")
    path = kubeconfig(
        tmp_path,
        {"client-certificate": "pki/admin.crt", "client-key": "pki/admin.key"},
        cluster={"server": "https://127.0.0.1:6443", "certificate-authority": "pki/ca.crt"},
    )

    assert isinstance(from_kubeconfig(path).context, ssl.SSLContext)


async def test_inline_token_and_basic_credentials_become_the_authorization_header(
    tmp_path: Path,
) -> None:
    with_token = from_kubeconfig(kubeconfig(tmp_path, {"token": "abc"}))
    with_basic = from_kubeconfig(kubeconfig(tmp_path, {"username": "ada", "password": "pw"}))

    assert await with_token.authorization() == {"Authorization": "Bearer abc"}
    assert await with_basic.authorization() == {
        "Authorization": "Basic " + base64.b64encode(b"ada:pw").decode()
    }


async def test_token_file_is_read_and_reread_after_its_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("first\n")
    reached = from_kubeconfig(kubeconfig(tmp_path, {"tokenFile": "token"}))
    assert await reached.authorization() == {"Authorization": "Bearer first"}

    (tmp_path / "token").write_text("rotated\n")
    assert await reached.authorization() == {"Authorization": "Bearer first"}  # cached
    monkeypatch.setattr(access, "_TOKEN_FILE_REREAD_S", 0.0)
    assert reached.tokens is not None
    reached.tokens._expires_at = 0.0
    assert await reached.authorization() == {"Authorization": "Bearer rotated"}


def plugin(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "plugin.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


async def test_exec_plugin_token_is_used_and_refreshed_when_it_expires(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    script = plugin(
        tmp_path,
        f"echo x >> {counter}; n=$(wc -l < {counter}); "
        'printf \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        '"status":{"token":"tok-%s","expirationTimestamp":"2000-01-01T00:00:00Z"}}\' $n',
    )
    reached = from_kubeconfig(
        kubeconfig(
            tmp_path,
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script)}},
        )
    )

    first = await reached.authorization()
    second = await reached.authorization()  # expired long ago: run again

    assert first == {"Authorization": "Bearer tok-1"}
    assert second == {"Authorization": "Bearer tok-2"}


async def test_failing_exec_plugin_names_the_kubeconfig(tmp_path: Path) -> None:
    script = plugin(tmp_path, "echo 'no credentials for you' >&2; exit 3")
    path = kubeconfig(tmp_path, {"exec": {"command": str(script)}})
    reached = from_kubeconfig(path)

    with pytest.raises(KubeconfigError, match=rf"{path}: exec plugin .* exited 3: no credentials"):
        await reached.authorization()


def test_context_and_missing_entries_are_named(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"token": "t"})

    with pytest.raises(KubeconfigError, match=rf"{path}: no user named 'missing'"):
        from_kubeconfig(path, context="other")
    with pytest.raises(KubeconfigError, match=rf"{path}: no context named 'absent'"):
        from_kubeconfig(path, context="absent")
    with pytest.raises(KubeconfigError, match=r"cannot read"):
        from_kubeconfig(tmp_path / "nowhere")


def test_auth_provider_kubeconfigs_are_left_to_kubernetes_asyncio(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"auth-provider": {"name": "oidc", "config": {}}})

    with pytest.raises(access._Unsupported):
        from_kubeconfig(path)


async def test_in_cluster_uses_the_service_account_token_and_ca(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    root = tmp_path / "serviceaccount"
    root.mkdir()
    (root / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    (root / "token").write_text("sa-token")

    reached = in_cluster(
        root, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    )

    assert reached.host == "https://10.96.0.1:443"
    assert await reached.authorization() == {"Authorization": "Bearer sa-token"}


def test_outside_a_cluster_without_kubeconfig_says_so() -> None:
    with pytest.raises(KubeconfigError, match="not running in a cluster"):
        in_cluster(Path("/nonexistent"), {})
