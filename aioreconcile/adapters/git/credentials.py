"""Turning a source's ``GitAuth`` into what git needs, without a secret ever reaching argv, a
URL git stores, a log line or an error message.

HTTPS basic auth goes through ``GIT_ASKPASS``: a tiny script, written once, prints the username
or the password from the child's own environment, where the values are put at each call
(read from ``password_env``/``password_file`` at that moment, so a rotated secret is picked up).
SSH uses a key file and a known_hosts file with strict host key checking. A URL written with
userinfo (``https://user:token@host/repo``) is stripped before use
(``engine.redaction.split_userinfo``, percent-decoded); its userinfo becomes basic credentials
unless the auth block names its own.

In CRD mode the credentials are the data of a Kubernetes Secret (``AuthKind.SECRET``), read
by a ``DataReader`` at each call (the Kubernetes adapter reads the Secret then), so a rotated
Secret is used by the next fetch; nothing of it is kept. Its keys decide the kind, as Flux's
GitRepository ``secretRef`` does: ``identity`` (+ ``known_hosts``) is ssh, ``password``
(+ ``username``, default ``git``) is basic auth through the askpass script. ssh reads a key
only from a file: ``ssh_files`` writes the two into a fresh 0700 directory for the one call and
the caller removes it afterwards.
"""

import os
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aioreconcile.engine.config import AuthKind, DataRef, GitAuth
from aioreconcile.engine.errors import FetchError
from aioreconcile.engine.redaction import SplitUrl, redact_url

USERNAME_ENV: Final = "AIORECONCILE_GIT_USERNAME"
PASSWORD_ENV: Final = "AIORECONCILE_GIT_PASSWORD"
ASKPASS_SCRIPT: Final = f"""#!/bin/sh
# Written by aioreconcile: git asks for "Username for ..." and "Password for ...".
case "$1" in
  Username*) printf '%s\\n' "${USERNAME_ENV}" ;;
  *) printf '%s\\n' "${PASSWORD_ENV}" ;;
esac
"""


DataReader = Callable[[DataRef], Awaitable[Mapping[str, bytes] | None]]
"""Reads a Secret's or ConfigMap's data now (None: it does not exist)."""


@dataclass(frozen=True)
class GitCredentials:
    """The environment to give git for one call and the values to redact from its output."""

    env: dict[str, str] = field(default_factory=dict, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)


def write_askpass(directory: Path) -> Path:
    """The askpass script in ``directory`` (mode 0700), written unless already there."""
    path = directory / "askpass.sh"
    if not path.exists() or path.read_text() != ASKPASS_SCRIPT:
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f".askpass.{os.getpid()}.tmp"
        temporary.write_text(ASKPASS_SCRIPT)
        temporary.chmod(0o700)
        temporary.replace(path)
    return path


def resolve_credentials(auth: GitAuth, url: SplitUrl, *, askpass: Path) -> GitCredentials:
    """The environment for git to authenticate as ``auth`` says, read now.

    Errors name the variable or file that is missing, never a value.
    """
    if auth.kind is AuthKind.SSH:
        return _ssh(auth)
    if auth.kind is AuthKind.BASIC or url.password is not None:
        username = auth.username or url.username
        password = _password(auth) if auth.kind is AuthKind.BASIC else None
        if password is None:
            password = url.password
        if password is None:
            raise FetchError(
                f"basic auth for {redact_url(url.url)} needs passwordEnv, passwordFile or a "
                "password in the URL"
            )
        env = {
            "GIT_ASKPASS": str(askpass),
            USERNAME_ENV: username or "",
            PASSWORD_ENV: password,
        }
        return GitCredentials(env=env, secrets=(password,))
    return GitCredentials()


def credentials_from_data(
    ref: DataRef,
    data: Mapping[str, bytes] | None,
    url: SplitUrl,
    *,
    askpass: Path,
    ssh_files: Callable[[bytes, bytes], tuple[Path, Path]],
) -> GitCredentials:
    """The environment for git from a Secret's data, read just now. Errors name the Secret
    and its missing key, never a value."""
    if data is None:
        raise FetchError(f"the {ref} holding the git credentials does not exist")
    if "identity" in data:
        if "known_hosts" not in data:
            raise FetchError(f"the {ref} has identity but no known_hosts (hosts are checked)")
        key, hosts = ssh_files(data["identity"], data["known_hosts"])
        return _ssh(
            GitAuth(kind=AuthKind.SSH, private_key_file=str(key), known_hosts_file=str(hosts))
        )
    if "password" not in data:
        raise FetchError(f"the {ref} has neither password nor identity")
    password = data["password"].decode("utf-8", errors="replace").rstrip("\r\n")
    username = data.get("username", b"git").decode("utf-8", errors="replace").strip()
    env = {"GIT_ASKPASS": str(askpass), USERNAME_ENV: username, PASSWORD_ENV: password}
    return GitCredentials(env=env, secrets=(password,))


def _password(auth: GitAuth) -> str | None:
    if auth.password_env:
        value = os.environ.get(auth.password_env)
        if value is None:
            raise FetchError(f"the environment variable {auth.password_env} is not set")
        return value
    if auth.password_file:
        try:
            return Path(auth.password_file).read_text().rstrip("\r\n")
        except OSError as e:
            raise FetchError(
                f"the password file {auth.password_file} cannot be read: {e.strerror}"
            ) from None
    return None


def _ssh(auth: GitAuth) -> GitCredentials:
    if not auth.private_key_file or not auth.known_hosts_file:
        raise FetchError("ssh auth needs both privateKeyFile and knownHostsFile")
    for name in (auth.private_key_file, auth.known_hosts_file):
        if not Path(name).is_file():
            raise FetchError(f"ssh auth: {name} is not a readable file")
    command = [
        "ssh",
        "-i",
        auth.private_key_file,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={auth.known_hosts_file}",
        "-o",
        "BatchMode=yes",
        "-F",
        "/dev/null",
    ]
    return GitCredentials(env={"GIT_SSH_COMMAND": shlex.join(command), "GIT_SSH_VARIANT": "ssh"})
