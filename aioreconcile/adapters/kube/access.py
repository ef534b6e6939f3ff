"""How to reach the API server: its URL, TLS, and the Authorization header, from a kubeconfig,
from the in-cluster service account, or (for anything else) through kubernetes_asyncio.

Why our own loader: importing kubernetes_asyncio brings in its generated client (37 MiB of RSS,
measured), a quarter of the controller's memory budget, to read a YAML file. The usual
credentials are handled here: client certificates, bearer tokens (inline or a file, re-read),
exec plugins (client.authentication.k8s.io, re-run before the token expires), basic auth, and
the in-cluster service account. Anything else (legacy ``auth-provider`` plugins) falls back to
kubernetes_asyncio, imported only then.
"""

import base64
import datetime
import os
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import anyio
import orjson
import yaml

from aioreconcile.engine.errors import AioreconcileError

_SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_TOKEN_FILE_REREAD_S: Final = 60.0
_EXEC_TIME_LIMIT_S: Final = 60.0
_EXEC_REFRESH_MARGIN_S: Final = 60.0


class KubeconfigError(AioreconcileError):
    """The kubeconfig is missing or unusable; the message names the file and the field."""


class ClusterAccess(Protocol):
    """What the transport needs to talk to one API server."""

    host: str

    def ssl_context(self) -> ssl.SSLContext | bool: ...

    async def authorization(self) -> Mapping[str, str]: ...

    async def close(self) -> None: ...


def _ssl(
    *,
    ca_file: str | None,
    ca_data: str | None,
    cert: tuple[bytes, bytes] | tuple[str, str] | None,
    insecure: bool,
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file, cadata=ca_data)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        certificate, key = cert
        if isinstance(certificate, bytes) and isinstance(key, bytes):
            # load_cert_chain reads files only: write a private temporary pair, load, delete.
            with tempfile.TemporaryDirectory(prefix="aioreconcile-cert-") as directory:
                cert_path, key_path = Path(directory) / "tls.crt", Path(directory) / "tls.key"
                for path, content in ((cert_path, certificate), (key_path, key)):
                    path.touch(mode=0o600)
                    path.write_bytes(content)
                context.load_cert_chain(str(cert_path), str(key_path))
        else:
            context.load_cert_chain(str(certificate), str(key))
    return context


@dataclass
class _TokenSource:
    """A bearer token: fixed, re-read from a file, or produced by an exec plugin."""

    token: str | None = None
    token_file: Path | None = None
    exec_spec: Mapping[str, Any] | None = None
    origin: str = ""
    _expires_at: float = 0.0

    async def current(self) -> str | None:
        now = time.time()
        if self.token_file is not None and (self.token is None or now >= self._expires_at):
            self.token = (await anyio.Path(self.token_file).read_text()).strip()
            self._expires_at = now + _TOKEN_FILE_REREAD_S
        elif self.exec_spec is not None and (self.token is None or now >= self._expires_at):
            self.token, self._expires_at = await _run_exec_plugin(self.exec_spec, self.origin)
        return self.token


async def _run_exec_plugin(spec: Mapping[str, Any], origin: str) -> tuple[str, float]:
    """Run a client-go credential plugin; return its token and when to run it again."""
    command = spec.get("command")
    if not isinstance(command, str) or not command:
        raise KubeconfigError(f"{origin}: user.exec.command is missing")
    env = dict(os.environ)
    for item in spec.get("env") or []:
        if isinstance(item, Mapping) and "name" in item:
            env[str(item["name"])] = str(item.get("value", ""))
    api_version = str(spec.get("apiVersion") or "client.authentication.k8s.io/v1")
    env["KUBERNETES_EXEC_INFO"] = orjson.dumps(
        {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    ).decode()
    argv = [command, *(str(a) for a in spec.get("args") or [])]
    try:
        with anyio.fail_after(_EXEC_TIME_LIMIT_S):
            result = await anyio.run_process(argv, env=env, stdin=subprocess.DEVNULL, check=False)
    except (OSError, TimeoutError) as e:
        raise KubeconfigError(f"{origin}: exec plugin {command!r} failed: {e}") from e
    if result.returncode != 0:
        raise KubeconfigError(
            f"{origin}: exec plugin {command!r} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace')[-300:]}"
        )
    try:
        status = orjson.loads(result.stdout).get("status") or {}
    except (orjson.JSONDecodeError, AttributeError) as e:
        raise KubeconfigError(f"{origin}: exec plugin {command!r} printed no ExecCredential") from e
    token = status.get("token")
    if not isinstance(token, str) or not token:
        raise KubeconfigError(f"{origin}: exec plugin {command!r} returned no status.token")
    expires = status.get("expirationTimestamp")
    refresh_at = float("inf")
    if isinstance(expires, str):
        moment = datetime.datetime.fromisoformat(expires.replace("Z", "+00:00"))
        refresh_at = moment.timestamp() - _EXEC_REFRESH_MARGIN_S
    return token, refresh_at


@dataclass
class TokenAccess:
    """A server reached with TLS and an optional bearer token or basic credentials."""

    host: str
    context: ssl.SSLContext | bool
    tokens: _TokenSource | None = None
    basic: str | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        return self.context

    async def authorization(self) -> Mapping[str, str]:
        if self.tokens is not None:
            token = await self.tokens.current()
            if token:
                return {"Authorization": f"Bearer {token}"}
        if self.basic is not None:
            return {"Authorization": f"Basic {self.basic}"}
        return {}

    async def close(self) -> None:
        return None


class _Unsupported(Exception):
    """This kubeconfig needs kubernetes_asyncio (an auth-provider plugin)."""


def _data_or_file(
    entry: Mapping[str, Any], name: str, *, base: Path
) -> tuple[bytes | None, str | None]:
    data = entry.get(f"{name}-data")
    if isinstance(data, str) and data:
        return base64.b64decode(data), None
    path = entry.get(name)
    if isinstance(path, str) and path:
        return None, str(base / path) if not os.path.isabs(path) else path
    return None, None


def _named(document: Mapping[str, Any], section: str, name: str, origin: str) -> Mapping[str, Any]:
    for item in document.get(section) or []:
        if isinstance(item, Mapping) and item.get("name") == name:
            value = item.get(section[:-1]) or {}
            if isinstance(value, Mapping):
                return value
    raise KubeconfigError(f"{origin}: no {section[:-1]} named {name!r}")


def from_kubeconfig(path: Path, *, context: str | None = None) -> TokenAccess:
    """Read ``path``; raise KubeconfigError naming the file and field, or _Unsupported."""
    origin = str(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as e:
        raise KubeconfigError(f"{origin}: cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise KubeconfigError(f"{origin}: not valid YAML") from e
    if not isinstance(document, Mapping):
        raise KubeconfigError(f"{origin}: not a kubeconfig")
    context_name = context or document.get("current-context")
    if not context_name:
        raise KubeconfigError(f"{origin}: no current-context and no context given")
    ctx = _named(document, "contexts", str(context_name), origin)
    cluster = _named(document, "clusters", str(ctx.get("cluster")), origin)
    user = _named(document, "users", str(ctx.get("user")), origin) if ctx.get("user") else {}
    if "auth-provider" in user:
        raise _Unsupported(origin)
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise KubeconfigError(f"{origin}: cluster {ctx.get('cluster')!r} has no server")
    base = path.parent
    ca_bytes, ca_file = _data_or_file(cluster, "certificate-authority", base=base)
    cert_bytes, cert_file = _data_or_file(user, "client-certificate", base=base)
    key_bytes, key_file = _data_or_file(user, "client-key", base=base)
    cert: tuple[bytes, bytes] | tuple[str, str] | None = None
    if cert_bytes is not None and key_bytes is not None:
        cert = (cert_bytes, key_bytes)
    elif cert_file and key_file:
        cert = (cert_file, key_file)
    insecure = bool(cluster.get("insecure-skip-tls-verify"))
    tls: ssl.SSLContext | bool = False
    if server.startswith("https"):
        try:
            tls = _ssl(
                ca_file=ca_file,
                ca_data=ca_bytes.decode() if ca_bytes else None,
                cert=cert,
                insecure=insecure,
            )
        except (OSError, ssl.SSLError) as e:
            raise KubeconfigError(f"{origin}: unusable certificate or key: {e}") from e
    tokens = None
    if isinstance(user.get("token"), str):
        tokens = _TokenSource(token=user["token"], origin=origin)
    elif isinstance(user.get("tokenFile"), str):
        token_file = Path(user["tokenFile"])
        tokens = _TokenSource(
            token_file=token_file if token_file.is_absolute() else base / token_file
        )
    elif isinstance(user.get("exec"), Mapping):
        tokens = _TokenSource(exec_spec=user["exec"], origin=origin)
    basic = None
    if isinstance(user.get("username"), str) and isinstance(user.get("password"), str):
        basic = base64.b64encode(f"{user['username']}:{user['password']}".encode()).decode()
    return TokenAccess(server.rstrip("/"), tls, tokens, basic)


def in_cluster(
    root: Path = _SERVICE_ACCOUNT, environ: Mapping[str, str] = os.environ
) -> TokenAccess:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeconfigError(
            "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a cluster"
        )
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    try:
        tls = _ssl(ca_file=str(root / "ca.crt"), ca_data=None, cert=None, insecure=False)
    except (OSError, ssl.SSLError) as e:
        raise KubeconfigError(f"in-cluster CA {root / 'ca.crt'}: {e}") from e
    return TokenAccess(server, tls, _TokenSource(token_file=root / "token"))


def pod_namespace(root: Path = _SERVICE_ACCOUNT) -> str:
    """The namespace this pod runs in (its service account's mounted ``namespace`` file), or
    ``default`` outside a pod, as client-go's in-cluster config and controller-runtime's
    leader election default it."""
    try:
        return (root / "namespace").read_text().strip() or "default"
    except OSError:
        return "default"


class KubernetesAsyncioAccess:
    """The fallback for kubeconfigs only kubernetes_asyncio understands (auth-provider)."""

    def __init__(self, api_client: Any) -> None:
        self._api_client = api_client
        self.host: str = api_client.configuration.host.rstrip("/")

    def ssl_context(self) -> ssl.SSLContext | bool:
        configuration = self._api_client.configuration
        if not configuration.host.startswith("https"):
            return False
        return _ssl(
            ca_file=configuration.ssl_ca_cert,
            ca_data=None,
            cert=(configuration.cert_file, configuration.key_file)
            if configuration.cert_file
            else None,
            insecure=not configuration.verify_ssl,
        )

    async def authorization(self) -> Mapping[str, str]:
        headers: dict[str, str] = {}
        await self._api_client.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    async def close(self) -> None:
        await self._api_client.close()


def _kubeconfig_path(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    variable = os.environ.get("KUBECONFIG")
    if variable:
        return Path(variable.split(os.pathsep)[0])
    default = Path.home() / ".kube" / "config"
    return default if default.exists() else None


async def cluster_access(
    kubeconfig: Path | None = None, *, context: str | None = None
) -> ClusterAccess:
    """Find the cluster the way kubectl does: the given file, $KUBECONFIG (its first file),
    ~/.kube/config, else the in-cluster service account."""
    path = _kubeconfig_path(kubeconfig)
    if path is None:
        return in_cluster()
    try:
        return from_kubeconfig(path, context=context)
    except _Unsupported:
        from aioreconcile.adapters.kube.connecting import connect

        return KubernetesAsyncioAccess(await connect(path, context=context))
