"""Which syncs a push concerns: a sync the receiver may trigger, same repository (however its
URL is written) and a tracked ref.

Users write a repository as https, ssh:// or scp-like ``git@host:org/repo.git``, with or without
``.git``; providers send yet other forms. Both sides are reduced to ``host/org/repo`` before
comparing, so the spelling of a URL never decides whether a push is applied. GitHub, GitLab,
Gitea, Forgejo and Bitbucket Server treat repository paths case-insensitively (``Acme/App`` and
``acme/app`` are one repository there), so for their deliveries the path is compared
case-folded; ``generic-hmac`` has no such server behind it and compares the path exactly.
"""

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit

from aioreconcile.engine.config import Provider, ReceiverSpec, SyncSpec
from aioreconcile.engine.triggers import Push, PushEvent, RefType

_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git+ssh": 22, "ssh+git": 22, "git": 9418}
_SCP_LIKE = re.compile(r"(?:[^@/:]+@)?(?P<host>[^/:]+):(?P<path>.*)")
_PINNED_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_CASE_INSENSITIVE_PATHS: Final = frozenset(
    {
        Provider.GITHUB,
        Provider.GITLAB,
        Provider.GITEA,
        Provider.FORGEJO,
        Provider.BITBUCKET_SERVER,
    }
)


@lru_cache(maxsize=4096)
def normalise_repository_url(url: str) -> str:
    """``host/org/repo``: host lower-cased, credentials, scheme, default port, trailing slashes
    and ``.git`` dropped, the path's case kept (some servers are case-sensitive).

    Never raises: a URL it cannot make sense of is compared as written, trimmed.
    """
    text = url.strip()
    if "://" in text:
        try:
            parts = urlsplit(text)
            host = parts.hostname or ""
            port = parts.port
        except ValueError:
            return _trim(text.rpartition("@")[2])
        if not parts.netloc:  # no valid scheme: not a URL, and what precedes "@" is userinfo
            return _trim(text.rpartition("@")[2])
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
            host = f"{host}:{port}"
        path = parts.path
    # Without a scheme, what precedes the last "@" is userinfo (git's scp-like
    # ``[user@]host:path``; no hosting service allows "@" in a repository path): dropped, so a
    # password written there never reaches the reasons and log lines that show this form.
    elif scp := _SCP_LIKE.fullmatch(text.rpartition("@")[2]):
        host, path = scp["host"].lower(), scp["path"]
    else:  # host/org/repo, as this function returns it
        host, _, path = text.rpartition("@")[2].partition("/")
        host = host.lower()
    return f"{host}/{_trim(path)}" if host else _trim(path)


def _trim(path: str) -> str:
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[: -len(".git")].rstrip("/")
    return path


def tracks(ref: str, event: PushEvent) -> bool:
    """Whether a sync tracking ``ref`` (``main``, ``refs/heads/main``, ``v1.2.0``) follows the
    pushed ref. A sync pinned to a commit SHA follows no ref, so no push moves it."""
    if _PINNED_SHA.fullmatch(ref):
        return False
    if ref.startswith("refs/"):
        return ref == event.ref
    return event.ref in (f"refs/heads/{ref}", f"refs/tags/{ref}")


def in_scope(receiver: ReceiverSpec, sync: SyncSpec) -> bool:
    """Whether ``receiver`` may trigger ``sync``: named in ``receiver.syncs``, or carrying every
    label of ``receiver.selector``. A receiver that names nothing triggers nothing. A Receiver
    resource (CRD mode) triggers only Syncs of its own namespace, as Flux's does."""
    if receiver.namespace is not None and sync.namespace != receiver.namespace:
        return False
    if sync.name in receiver.syncs:
        return True
    selector = receiver.selector
    return bool(selector) and all(sync.labels.get(k) == v for k, v in selector.items())


def repository_key(url: str, provider: str) -> str:
    """The form two repository URLs are compared in for a delivery of ``provider``."""
    normal = normalise_repository_url(url)
    return normal.casefold() if provider in _CASE_INSENSITIVE_PATHS else normal


def matching_syncs(
    event: PushEvent, syncs: Iterable[SyncSpec], *, receiver: ReceiverSpec
) -> tuple[list[Push], str]:
    """The ``Push`` triggers a push causes among the syncs ``receiver`` may trigger and, when
    there are none, why (for the response and the log line). A deleted ref never triggers
    anything: applying "nothing" would prune every object of the sync."""
    repositories = {repository_key(url, event.provider) for url in event.repository_urls}
    shown = normalise_repository_url(event.repository_urls[0]) if event.repository_urls else "?"
    if event.deleted:
        what = "tag" if event.ref_type is RefType.TAG else "branch"
        return [], f"{what} deleted: nothing to apply"
    pushes: list[Push] = []
    suspended: list[str] = []
    outside = False
    for sync in syncs:
        if repository_key(sync.source.url, event.provider) not in repositories:
            continue
        if not tracks(sync.source.ref, event):
            continue
        if not in_scope(receiver, sync):
            outside = True  # never named in the answer: the sender learns no other sync
            continue
        if sync.suspend:
            suspended.append(sync.name)
            continue
        pushes.append(Push(sync=sync.name, sha=event.after, event=event))
    if pushes:
        return pushes, ""
    if suspended:
        return [], f"syncs tracking {shown} ref {event.ref} are suspended: {', '.join(suspended)}"
    if outside:
        return [], f"no sync receiver {receiver.name!r} may trigger tracks {shown} ref {event.ref}"
    return [], f"no sync tracks {shown} ref {event.ref}"


def triggers_for(
    events: Sequence[PushEvent], syncs: Iterable[SyncSpec], *, receiver: ReceiverSpec
) -> tuple[list[Push], list[str]]:
    """Every sync one delivery triggers, once each, and the reasons of the refs that triggered
    nothing. A delivery may list one ref twice (Bitbucket Server ``changes[]``), or a branch and
    a tag of the same short name: a Push only means "look at the ref now", so one per sync is
    all there is to do (the first event's, for its trace context)."""
    listed = list(syncs)
    found: dict[str, Push] = {}
    reasons: list[str] = []
    for event in events:
        pushes, reason = matching_syncs(event, listed, receiver=receiver)
        for push in pushes:
            found.setdefault(push.sync, push)
        if reason:
            reasons.append(reason)
    return list(found.values()), reasons
