"""Reading ``aioreconcile run --config FILE``: YAML text -> ControllerConfig, or one error that
lists every problem with its field path and the file, e.g.
``config.yaml: syncs[0].source.url: required``. Unknown keys are errors, so a typo never
silently turns a policy off. Pure: the caller reads the file.
"""

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import yaml

from aioreconcile.engine.config import (
    AuthKind,
    CommitVerification,
    ControllerConfig,
    GitAuth,
    GitSourceSpec,
    Provider,
    ReceiverSpec,
    ServiceAccountRef,
    SyncSpec,
    VerifyMode,
)
from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.redaction import ambiguous_userinfo, redact_text
from aioreconcile.engine.sources import RenderSpec, RenderType

_DURATION: Final = re.compile(
    r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
    r"(?:(\d+(?:\.\d+)?)ms)?$"
)
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SHA: Final = re.compile(r"^[0-9a-f]{40}$")
_URL_SCHEMES: Final = frozenset({"https", "http", "ssh", "git+ssh", "ssh+git", "git", "file"})
_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
_REMOTE_HELPER: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCP_HOST: Final = re.compile(r"^(?:[^@/:]*@)?([^/:]+):")
# Kubernetes label syntax: an optional DNS-subdomain prefix and "/", a name of at most 63.
_LABEL_NAME: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
T = TypeVar("T")


class ConfigError(AioreconcileError):
    """The configuration is invalid; ``problems`` holds each ``path: message``."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        self.origin = origin
        self.problems = problems
        super().__init__("\n".join(f"{origin}: {p}" for p in problems))


class _Reader:
    """Walks a decoded document, collecting problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: object, path: str, allowed: set[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a mapping, not {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                # A mistyped line can make a whole URL the key ({url:https://user:token@...}).
                name = redact_text(str(key))
                self.fail(f"{path}.{name}" if path else name, f"unknown field (known: {known})")
        return value

    def field(
        self,
        data: Mapping[str, Any],
        path: str,
        key: str,
        kind: type[T],
        default: T | None = None,
        *,
        required: bool = False,
    ) -> T | None:
        where = f"{path}.{key}" if path else key
        if key not in data or data[key] is None:
            if required:
                self.fail(where, "required")
            return default
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.fail(where, f"must be {kind.__name__}, not {type(value).__name__}")
            return default
        return value

    def choice(
        self, data: Mapping[str, Any], path: str, key: str, make: Callable[[str], T], default: T
    ) -> T:
        raw = self.field(data, path, key, str)
        if raw is None:
            return default
        try:
            return make(raw)
        except ValueError:
            self.fail(f"{path}.{key}", f"{raw!r} is not one of the allowed values")
            return default

    def duration(self, data: Mapping[str, Any], path: str, key: str, default: float) -> float:
        """Seconds from ``90``, ``30s``, ``5m``, ``1h30m``, ``1m500ms`` (the Go durations a
        Sync's fields take); must be positive."""
        raw = data.get(key)
        where = f"{path}.{key}"
        if raw is None:
            return default
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            seconds = float(raw)
        elif isinstance(raw, str) and (parsed := duration_seconds(raw)) is not None:
            seconds = parsed
        else:
            self.fail(where, f"{raw!r} is not a duration (e.g. 30s, 5m, 1h)")
            return default
        if seconds <= 0:
            self.fail(where, "must be positive")
            return default
        return seconds


def duration_seconds(text: str) -> float | None:
    """Seconds from ``90``, ``0.5``, ``30s``, ``5m``, ``1h30m``; None if ``text`` is none of
    these. The one reading of a duration: the config file's fields and the CLI's flags."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        match = _DURATION.match(value) if value else None
        if match is None:
            return None
        hours, minutes, secs, millis = (float(g) if g else 0.0 for g in match.groups())
        return hours * 3600 + minutes * 60 + secs + millis / 1000
    return seconds if math.isfinite(seconds) else None


def _auth(reader: _Reader, value: object, path: str) -> GitAuth:
    data = reader.mapping(
        value, path, {"username", "passwordEnv", "passwordFile", "sshKeyFile", "knownHostsFile"}
    )
    if not data:
        return GitAuth()
    ssh_key = reader.field(data, path, "sshKeyFile", str)
    known_hosts = reader.field(data, path, "knownHostsFile", str)
    password_env = reader.field(data, path, "passwordEnv", str)
    password_file = reader.field(data, path, "passwordFile", str)
    if ssh_key:
        if not known_hosts:
            reader.fail(f"{path}.knownHostsFile", "required with sshKeyFile (hosts are checked)")
        return GitAuth(kind=AuthKind.SSH, private_key_file=ssh_key, known_hosts_file=known_hosts)
    if password_env and password_file:
        reader.fail(path, "give passwordEnv or passwordFile, not both")
    if not (password_env or password_file):
        reader.fail(path, "needs passwordEnv or passwordFile (or sshKeyFile)")
    return GitAuth(
        kind=AuthKind.BASIC,
        username=reader.field(data, path, "username", str) or "git",
        password_env=password_env,
        password_file=password_file,
    )


def _verify(reader: _Reader, value: object, path: str) -> CommitVerification:
    data = reader.mapping(value, path, {"mode", "keyringFile", "allowedSignersFile"})
    mode = reader.choice(data, path, "mode", VerifyMode, VerifyMode.NONE)
    keyring = reader.field(data, path, "keyringFile", str)
    signers = reader.field(data, path, "allowedSignersFile", str)
    if mode is VerifyMode.GPG and not keyring:
        reader.fail(f"{path}.keyringFile", "required with mode gpg")
    if mode is VerifyMode.SSH and not signers:
        reader.fail(f"{path}.allowedSignersFile", "required with mode ssh")
    return CommitVerification(mode=mode, keyring_file=keyring, allowed_signers_file=signers)


def _source(reader: _Reader, value: object, path: str) -> GitSourceSpec:
    data = reader.mapping(
        value, path, {"url", "ref", "path", "auth", "verify", "interval", "timeout"}
    )
    if not data:
        reader.fail(path, "required")
    url = reader.field(data, path, "url", str, required=True) or ""
    if url and (problem := url_problem(url)):
        reader.fail(f"{path}.url", problem)
    ref = reader.field(data, path, "ref", str) or "main"
    sub_path = reader.field(data, path, "path", str) or "."
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        reader.fail(f"{path}.path", "must stay inside the repository (relative, no '..')")
    if ref.startswith("refs/") and not ref.startswith(("refs/heads/", "refs/tags/")):
        reader.fail(f"{path}.ref", "a full ref must be under refs/heads/ or refs/tags/")
    if any(c.isspace() or not c.isprintable() for c in ref):
        # git refuses C0 controls itself; U+0085, U+2028 or U+202E would forge what is printed.
        reader.fail(f"{path}.ref", "must not contain whitespace or control characters")
    elif _SHA.match(ref) is None and any(c in ref for c in " ~^:?*[\\"):
        reader.fail(f"{path}.ref", f"{ref!r} is not a valid branch, tag or commit SHA")
    return GitSourceSpec(
        url=url,
        ref=ref,
        path=sub_path,
        auth=_auth(reader, data.get("auth"), f"{path}.auth"),
        verify=_verify(reader, data.get("verify"), f"{path}.verify"),
        interval_s=reader.duration(data, path, "interval", 300.0),
        timeout_s=reader.duration(data, path, "timeout", 60.0),
    )


def url_problem(url: str) -> str | None:
    """Why git must not be given ``url``, or None.

    git reads an argument starting with ``-`` as an option (``--upload-pack=<command>`` runs
    the command; CVE-2017-1000117 was the same for ssh hosts), ``<helper>::<address>`` runs a
    remote helper (``ext::`` a shell command), and whitespace or control characters have no
    place in a repository address but can forge a log line. Only the URL forms git documents
    for a remote repository are taken: ``https``, ``http``, ``ssh``, ``git``, ``file`` URLs, the
    scp-like ``user@host:path`` and a local path. Messages never quote the URL (it may hold a
    password).
    """
    if url.startswith("-"):
        return "must not start with '-' (git would read it as an option)"
    if _REMOTE_HELPER.match(url):
        return "a '<transport>::<address>' remote helper URL is not allowed (it runs a program)"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain whitespace or control characters"
    if scheme := _SCHEME.match(url):
        if scheme[1].lower() not in _URL_SCHEMES:
            allowed = ", ".join(sorted(_URL_SCHEMES))
            return f"scheme {scheme[1]!r} is not supported ({allowed})"
        if ambiguous_userinfo(url):
            return (
                "the password in the URL holds '#', '?' or '/': percent-encode it (%23, %3F, "
                "%2F) or use auth.passwordEnv / auth.passwordFile"
            )
        if scheme[2].rpartition("@")[2].startswith("-"):
            return "the host must not start with '-' (ssh would read it as an option)"
    elif (host := _SCP_HOST.match(url)) and host[1].startswith("-"):
        return "the host must not start with '-' (ssh would read it as an option)"
    return None


def _render(reader: _Reader, value: object, path: str, namespace: str | None) -> RenderSpec:
    data = reader.mapping(value, path, {"type", "releaseName", "values", "valuesFiles"})
    values = reader.field(data, path, "values", dict) or {}
    files = reader.field(data, path, "valuesFiles", list) or []
    for index, item in enumerate(files):
        if not isinstance(item, str):
            reader.fail(f"{path}.valuesFiles[{index}]", "must be a path string")
    return RenderSpec(
        type=reader.choice(data, path, "type", RenderType, RenderType.AUTO),
        release_name=reader.field(data, path, "releaseName", str),
        namespace=namespace,
        values=values,
        values_files=tuple(str(f) for f in files),
    )


def service_account_ref(value: str, *, default_namespace: str | None) -> ServiceAccountRef:
    """``namespace/name``, or a bare ``name`` in ``default_namespace`` (a file-mode sync's
    ``targetNamespace``). Without a namespace to take the value would be a guess, so it is
    refused; so is the ``system:serviceaccount:`` user name, which the caller must not write
    (it is derived). Raises ValueError with a message fit for the config check."""
    if value.startswith("system:"):
        raise ValueError(f"{value!r}: give namespace/name, not a user name")
    namespace, slash, name = value.rpartition("/")
    if not slash:
        if default_namespace is None:
            raise ValueError(
                f"{value!r} names no namespace and the sync has no targetNamespace: "
                "write namespace/name"
            )
        namespace = default_namespace
    if not _DNS_LABEL.match(namespace):
        raise ValueError(f"{value!r}: namespace {namespace!r} is not a DNS label")
    if not _DNS_SUBDOMAIN.match(name):
        raise ValueError(f"{value!r}: name {name!r} is not a valid ServiceAccount name")
    return ServiceAccountRef(namespace=namespace, name=name)


def _service_account(
    reader: _Reader, data: Mapping[str, Any], path: str, namespace: str | None
) -> ServiceAccountRef | None:
    raw = reader.field(data, path, "serviceAccount", str)
    if raw is None:
        return None
    try:
        return service_account_ref(raw, default_namespace=namespace)
    except ValueError as e:
        reader.fail(f"{path}.serviceAccount", str(e))
        return None


def _wait(reader: _Reader, data: Mapping[str, Any], path: str) -> tuple[bool, float]:
    """``wait`` and its ``timeout``. The sync-level ``timeout`` bounds the health wait only
    (``source.timeout`` bounds each git call); given without ``wait: true`` it would do
    nothing, so it is refused rather than ignored."""
    wait = bool(reader.field(data, path, "wait", bool, False))
    timeout = reader.duration(data, path, "timeout", 300.0)
    if not wait and data.get("timeout") is not None:
        reader.fail(f"{path}.timeout", "only used with wait: true (the health wait's limit)")
    return wait, timeout


def _labels(reader: _Reader, value: object, path: str) -> dict[str, str]:
    """A Kubernetes-style label map (keys and values checked as the apiserver would)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        reader.fail(path, f"must be a mapping, not {type(value).__name__}")
        return {}
    labels: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            reader.fail(f"{path}.{key}", f"must be str, not {type(item).__name__}")
            continue
        prefix, _, name = str(key).rpartition("/")
        if not _LABEL_NAME.match(name) or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
            reader.fail(path, f"{key!r} is not a valid label key")
        elif item and not _LABEL_NAME.match(item):
            reader.fail(f"{path}.{key}", f"{item!r} is not a valid label value")
        else:
            labels[str(key)] = item
    return labels


def _sync(reader: _Reader, value: object, path: str) -> SyncSpec:
    data = reader.mapping(
        value,
        path,
        {
            "name",
            "source",
            "render",
            "targetNamespace",
            "serviceAccount",
            "prune",
            "selfHeal",
            "suspend",
            "allowEmpty",
            "wait",
            "timeout",
            "labels",
        },
    )
    name = reader.field(data, path, "name", str, required=True) or ""
    if name and not _DNS_LABEL.match(name):
        reader.fail(f"{path}.name", f"{name!r} must be a DNS label (a-z, 0-9, '-', at most 63)")
    namespace = reader.field(data, path, "targetNamespace", str)
    wait, wait_timeout_s = _wait(reader, data, path)
    return SyncSpec(
        name=name,
        source=_source(reader, data.get("source"), f"{path}.source"),
        render=_render(reader, data.get("render"), f"{path}.render", namespace),
        target_namespace=namespace,
        service_account=_service_account(reader, data, path, namespace),
        prune=bool(reader.field(data, path, "prune", bool, True)),
        self_heal=bool(reader.field(data, path, "selfHeal", bool, True)),
        suspend=bool(reader.field(data, path, "suspend", bool, False)),
        allow_empty=bool(reader.field(data, path, "allowEmpty", bool, False)),
        wait=wait,
        wait_timeout_s=wait_timeout_s,
        labels=_labels(reader, data.get("labels"), f"{path}.labels"),
    )


def _receiver(reader: _Reader, value: object, path: str) -> ReceiverSpec:
    data = reader.mapping(
        value,
        path,
        {"name", "provider", "secretEnv", "secretFile", "maxBodyBytes", "syncs", "selector"},
    )
    name = reader.field(data, path, "name", str, required=True) or ""
    if name and not _DNS_LABEL.match(name):
        reader.fail(f"{path}.name", f"{name!r} must be a DNS label (it is part of the URL)")
    if "provider" not in data:
        reader.fail(f"{path}.provider", f"required ({', '.join(p.value for p in Provider)})")
    secret_env = reader.field(data, path, "secretEnv", str)
    secret_file = reader.field(data, path, "secretFile", str)
    if not (secret_env or secret_file):
        reader.fail(path, "a secret is mandatory: set secretEnv or secretFile")
    if secret_env and secret_file:
        reader.fail(path, "give secretEnv or secretFile, not both")
    max_body = reader.field(data, path, "maxBodyBytes", int, 5 * 1024 * 1024) or 0
    if max_body <= 0:
        reader.fail(f"{path}.maxBodyBytes", "must be positive")
    syncs = reader.field(data, path, "syncs", list) or []
    for index, item in enumerate(syncs):
        if not isinstance(item, str):
            reader.fail(f"{path}.syncs[{index}]", "must be a sync name")
    selector_path = f"{path}.selector"
    selector_data = reader.mapping(data.get("selector"), selector_path, {"matchLabels"})
    selector: dict[str, str] = {}
    if "matchLabels" in selector_data:
        match_path = f"{selector_path}.matchLabels"
        selector = _labels(reader, selector_data["matchLabels"], match_path)
        if not selector:
            reader.fail(match_path, "must name at least one label (there is no 'every sync')")
    elif not syncs:
        reader.fail(
            path,
            "names no syncs: set syncs: [names] or selector.matchLabels "
            "(a receiver triggers only the syncs it names; there is no 'every sync')",
        )
    return ReceiverSpec(
        name=name,
        provider=reader.choice(data, path, "provider", Provider, Provider.GENERIC_HMAC),
        secret_env=secret_env,
        secret_file=secret_file,
        max_body_bytes=max_body,
        syncs=tuple(str(name) for name in syncs),
        selector=selector,
    )


def _unique(reader: _Reader, names: list[str], path: str) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            reader.fail(
                f"{path}[{index}].name", f"{name!r} is already used by {path}[{seen[name]}]"
            )
        seen.setdefault(name, index)


def parse_config(text: str, *, origin: str) -> ControllerConfig:
    """Parse and validate; raise ConfigError naming every bad field and the file."""
    try:
        document = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(origin, ["line 1: nested too deeply to be read"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(
            origin, [f"{where}not valid YAML ({getattr(e, 'problem', None) or e})"]
        ) from None
    reader = _Reader()
    top = reader.mapping(document, "", {"syncs", "receivers"})
    raw_syncs = reader.field(top, "", "syncs", list) or []
    raw_receivers = reader.field(top, "", "receivers", list) or []
    syncs = [_sync(reader, item, f"syncs[{i}]") for i, item in enumerate(raw_syncs)]
    receivers = [_receiver(reader, item, f"receivers[{i}]") for i, item in enumerate(raw_receivers)]
    _unique(reader, [s.name for s in syncs], "syncs")
    _unique(reader, [r.name for r in receivers], "receivers")
    known = {s.name for s in syncs}
    for i, receiver in enumerate(receivers):
        for j, name in enumerate(receiver.syncs):
            if name not in known:
                reader.fail(f"receivers[{i}].syncs[{j}]", f"no sync is named {name!r}")
    if reader.problems:
        raise ConfigError(origin, reader.problems)
    return ControllerConfig(syncs=tuple(syncs), receivers=tuple(receivers))
