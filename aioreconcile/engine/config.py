"""The definition of syncs and receivers, shared by ``aioreconcile run --config FILE`` and the
in-cluster CRD (same field names, camelCase as in Kubernetes)."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from aioreconcile.engine.sources import RenderSpec


class AuthKind(StrEnum):
    NONE = "none"
    BASIC = "basic"  # HTTPS username + password/token
    SSH = "ssh"  # private key + known_hosts
    # A Kubernetes Secret (CRD mode): username/password or identity/known_hosts, by its keys.
    SECRET = "secret"


@dataclass(frozen=True)
class DataRef:
    """A Secret or ConfigMap whose data the adapters read at each use (CRD mode), so a rotated
    value is taken by the next call without a restart and never copied into a spec."""

    kind: str  # "Secret" or "ConfigMap"
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class GitAuth:
    """Credentials by reference: values are read from the environment or files at use time and
    never stored in a spec, a log line or a process argument."""

    kind: AuthKind = AuthKind.NONE
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    private_key_file: str | None = None
    known_hosts_file: str | None = None
    secret: DataRef | None = None  # kind SECRET


class VerifyMode(StrEnum):
    NONE = "none"
    GPG = "gpg"
    SSH = "ssh"


@dataclass(frozen=True)
class CommitVerification:
    mode: VerifyMode = VerifyMode.NONE
    keyring_file: str | None = None  # gpg: armored public keys
    allowed_signers_file: str | None = None  # ssh: gpg.ssh.allowedSignersFile format
    # CRD mode: the keys from a Secret or ConfigMap (gpg: every data key holds armored public
    # keys; ssh: the key ``allowed_signers``), read at each verification.
    keys: DataRef | None = None


@dataclass(frozen=True)
class GitSourceSpec:
    """Where a sync's manifests come from. ``ref`` is a branch, a tag or a full commit SHA."""

    url: str
    ref: str = "main"
    path: str = "."
    auth: GitAuth = field(default_factory=GitAuth)
    verify: CommitVerification = field(default_factory=CommitVerification)
    interval_s: float = 300.0
    timeout_s: float = 60.0


@dataclass(frozen=True)
class ServiceAccountRef:
    """The Kubernetes identity a sync acts as: every request for its objects impersonates
    ``system:serviceaccount:<namespace>:<name>`` with the groups the API server gives a real
    token of that account (client-go ``rest.ImpersonationConfig``; Flux's kustomize-controller
    impersonates ``spec.serviceAccountName`` the same way), so RBAC decides what it may do."""

    namespace: str
    name: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    @property
    def groups(self) -> tuple[str, ...]:
        return (
            "system:serviceaccounts",
            f"system:serviceaccounts:{self.namespace}",
            "system:authenticated",
        )

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SyncSpec:
    """One Git source, how to render it, where it goes and the policy for keeping it there.

    ``wait``: after an apply, the sync is Ready only once every applied object is healthy
    (kstatus, ``engine.health``), or it fails with HealthCheckFailed after ``wait_timeout_s``
    (Flux Kustomization ``spec.wait``/``spec.timeout``). ``wait_timeout_s`` is that health wait
    only; each git call has its own ``source.timeout_s``.

    ``labels`` let a receiver's ``selector`` name syncs without listing them (as Flux's
    Receiver selects its resources by ``matchLabels``)."""

    name: str
    source: GitSourceSpec
    render: RenderSpec = field(default_factory=RenderSpec)
    target_namespace: str | None = None
    service_account: ServiceAccountRef | None = None
    prune: bool = True
    self_heal: bool = True
    suspend: bool = False
    allow_empty: bool = False
    wait: bool = False
    wait_timeout_s: float = 300.0
    labels: Mapping[str, str] = field(default_factory=dict)
    # CRD mode: the syncs (by their label value, ``resources.sync_identity``) that must be Ready
    # before this one is applied (Flux Kustomization ``dependsOn``).
    depends_on: tuple[str, ...] = ()
    namespace: str | None = None  # CRD mode: the Sync's namespace (a Receiver's scope)


class Provider(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    GITEA = "gitea"
    FORGEJO = "forgejo"
    BITBUCKET_SERVER = "bitbucket-server"
    GENERIC_HMAC = "generic-hmac"


@dataclass(frozen=True)
class ReceiverSpec:
    """A webhook endpoint ``POST /hooks/<name>``. The secret is mandatory and given by
    reference (environment variable or file).

    A receiver triggers only the syncs it names (``syncs``) or selects (``selector``, a
    ``matchLabels`` map: every label must match), like Flux's Receiver ``resources``: one
    leaked secret moves only its own syncs. Naming none triggers nothing (and the config check
    refuses it): there is no implicit "every sync"."""

    name: str
    provider: Provider
    secret_env: str | None = None
    secret_file: str | None = None
    max_body_bytes: int = 5 * 1024 * 1024
    syncs: tuple[str, ...] = ()
    selector: Mapping[str, str] = field(default_factory=dict)
    # CRD mode: the Receiver's namespace; it triggers only Syncs of that namespace.
    namespace: str | None = None


@dataclass(frozen=True)
class ControllerConfig:
    syncs: tuple[SyncSpec, ...] = ()
    receivers: tuple[ReceiverSpec, ...] = ()
