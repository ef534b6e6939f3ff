"""Webhook deliveries as data: verify a signature, turn a provider's payload into ``PushEvent``s.

Pure on purpose: the receiver (``adapters.webhook``) only moves bytes; everything that decides
whether a request is authentic and what it means lives here, so every provider's format is
tested with plain fixtures and fuzzed without a server.

Errors never echo the body or a header value that might carry a credential: a malformed
delivery is answered with a short reason, and that reason ends up in logs.
"""

import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aioreconcile.engine.config import Provider
from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.redaction import redact_text
from aioreconcile.engine.triggers import PushedCommit, PushEvent

ZERO_SHA = "0" * 40
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# What git check-ref-format refuses, roughly: enough that a ref from a payload is safe to hand to
# git as an argument and to print in a log line.
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)|/$")
_MAX_REF = 1024
_MAX_DELIVERY_ID = 128
_MAX_NAME = 64  # how much of an unknown event name a reason quotes


class WebhookError(AioreconcileError):
    """The delivery is authentic but malformed. The message is safe to log and to answer with."""


class DeliveryKind(StrEnum):
    PUSH = "push"
    PING = "ping"
    IGNORED = "ignored"


@dataclass(frozen=True)
class ParsedDelivery:
    """What one delivery means. ``pushes`` has one entry per ref the push changed (Bitbucket
    Server sends several in one request; the others always one); it is empty unless ``kind``
    is PUSH. ``reason`` says why an IGNORED delivery was ignored."""

    kind: DeliveryKind
    delivery_id: str
    event: str
    pushes: tuple[PushEvent, ...] = ()
    reason: str = ""


# --- signatures ---------------------------------------------------------------------------------

_SIGNATURE_HEADERS: Mapping[Provider, tuple[str, ...]] = {
    Provider.GITHUB: ("X-Hub-Signature-256",),
    Provider.GITLAB: ("X-Gitlab-Token",),
    Provider.GITEA: ("X-Gitea-Signature",),
    Provider.FORGEJO: ("X-Forgejo-Signature", "X-Gitea-Signature"),
    Provider.BITBUCKET_SERVER: ("X-Hub-Signature",),
    Provider.GENERIC_HMAC: ("X-Signature",),
}
_PREFIXED = {Provider.GITHUB, Provider.BITBUCKET_SERVER, Provider.GENERIC_HMAC}


def signature_header(provider: Provider) -> str:
    """The header a provider signs with, for messages and docs."""
    return _SIGNATURE_HEADERS[provider][0]


def lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    """HTTP header names are case-insensitive; every lookup here is on the lower-case name."""
    return {key.lower(): value for key, value in headers.items()}


def verify(provider: Provider, headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """Whether the delivery was sent by someone who knows ``secret``.

    HMAC providers sign the raw body with HMAC-SHA256; GitLab sends the shared token itself.
    Every comparison is constant-time, and an empty secret never verifies anything (a receiver
    without a secret would accept the whole internet).
    """
    if not secret:
        return False
    lowered = lower_keys(headers)
    given = next(
        (lowered[h.lower()] for h in _SIGNATURE_HEADERS[provider] if h.lower() in lowered), None
    )
    if given is None:
        return False
    presented = given.strip().encode("utf-8", "replace")
    if provider is Provider.GITLAB:
        return hmac.compare_digest(presented, secret)
    if provider in _PREFIXED:
        algorithm, _, presented = presented.partition(b"=")
        if algorithm.lower() != b"sha256":
            return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(presented.lower(), expected)


def sign(secret: bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 every HMAC provider sends (GitHub-style headers prefix ``sha256=``)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


# --- duplicate deliveries -----------------------------------------------------------------------


class DeliveryLog:
    """The delivery ids seen lately, per receiver, so a redelivered push triggers nothing.

    Bounded (least recently seen forgotten first): memory stays flat however many deliveries
    arrive, and a duplicate older than ``capacity`` deliveries only costs one idempotent sync.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("a delivery log needs room for at least one id")
        self.capacity = capacity
        self._ids: OrderedDict[tuple[str, str], None] = OrderedDict()

    def seen(self, receiver: str, delivery_id: str) -> bool:
        """Record the delivery; true if it was already recorded."""
        key = (receiver, delivery_id)
        if key in self._ids:
            self._ids.move_to_end(key)
            return True
        self._ids[key] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False

    def forget(self, receiver: str, delivery_id: str) -> None:
        """Drop a delivery that could not be acted on, so the sender's retry is not a duplicate."""
        self._ids.pop((receiver, delivery_id), None)

    def __len__(self) -> int:
        return len(self._ids)


# --- parsing ------------------------------------------------------------------------------------


def parse(provider: Provider, headers: Mapping[str, str], body: bytes) -> ParsedDelivery:
    """What an (already verified) delivery means. Raises ``WebhookError`` and nothing else."""
    lowered = lower_keys(headers)
    match provider:
        case Provider.GITHUB:
            return _parse_github_like(provider, lowered, body, prefixes=("github",))
        case Provider.GITEA:
            return _parse_github_like(provider, lowered, body, prefixes=("gitea", "github"))
        case Provider.FORGEJO:
            return _parse_github_like(
                provider, lowered, body, prefixes=("forgejo", "gitea", "github")
            )
        case Provider.GITLAB:
            return _parse_gitlab(lowered, body)
        case Provider.BITBUCKET_SERVER:
            return _parse_bitbucket_server(lowered, body)
        case Provider.GENERIC_HMAC:
            return _parse_generic(lowered, body)
    raise WebhookError(f"unsupported provider {provider!r}")  # pragma: no cover


def _parse_github_like(
    provider: Provider, headers: Mapping[str, str], body: bytes, *, prefixes: tuple[str, ...]
) -> ParsedDelivery:
    """GitHub, and Gitea/Forgejo, which send a GitHub-shaped push under their own headers."""
    event = _first_header(headers, [f"x-{p}-event" for p in prefixes])
    if event is None:
        raise WebhookError(f"missing X-{prefixes[0].capitalize()}-Event header")
    delivery_id = _delivery_id(_first_header(headers, [f"x-{p}-delivery" for p in prefixes]), body)
    if event == "ping":
        return ParsedDelivery(DeliveryKind.PING, delivery_id, event)
    if event != "push":
        return _ignored(delivery_id, event)
    payload = _json_object(body)
    before = _sha(payload, "before")
    after = _sha(payload, "after")
    push = PushEvent(
        provider=str(provider),
        delivery_id=delivery_id,
        repository_urls=_urls(
            _object(payload, "repository"), ("clone_url", "ssh_url", "html_url", "git_url", "url")
        ),
        ref=_ref(payload.get("ref")),
        before=before,
        after=after,
        created=_flag(payload, "created", default=before == ZERO_SHA),
        deleted=_flag(payload, "deleted", default=after == ZERO_SHA),
        forced=_flag(payload, "forced", default=False),
        commits=_commits(payload.get("commits"), id_key="id"),
    )
    return ParsedDelivery(DeliveryKind.PUSH, delivery_id, event, (push,))


_GITLAB_PUSH_EVENTS = {"Push Hook", "Tag Push Hook"}
_GITLAB_PUSH_KINDS = {"push", "tag_push"}


def _parse_gitlab(headers: Mapping[str, str], body: bytes) -> ParsedDelivery:
    """GitLab: ``Push Hook`` / ``Tag Push Hook`` (and a system hook carrying either)."""
    event = headers.get("x-gitlab-event")
    if event is None:
        raise WebhookError("missing X-Gitlab-Event header")
    # Idempotency-Key stays the same across GitLab's retries of one delivery; the event UUID is
    # what older GitLab versions send.
    delivery_id = _delivery_id(
        _first_header(headers, ["idempotency-key", "x-gitlab-event-uuid"]), body
    )
    if event not in _GITLAB_PUSH_EVENTS and event != "System Hook":
        return _ignored(delivery_id, event)
    payload = _json_object(body)
    kind = payload.get("object_kind")
    if not isinstance(kind, str) or kind not in _GITLAB_PUSH_KINDS:
        if event == "System Hook":
            return _ignored(delivery_id, f"System Hook/{_quoted_name(kind)}")
        raise WebhookError(f"a {event} without object_kind push or tag_push")
    before = _sha(payload, "before")
    after = _sha(payload, "after")
    project = payload.get("project")
    repository = payload.get("repository")
    urls = _urls(
        project if isinstance(project, dict) else {},
        ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url", "url"),
        required=False,
    ) + _urls(
        repository if isinstance(repository, dict) else {},
        ("git_http_url", "git_ssh_url", "homepage", "url"),
        required=False,
    )
    if not urls:
        raise WebhookError("payload names no repository URL")
    push = PushEvent(
        provider=str(Provider.GITLAB),
        delivery_id=delivery_id,
        repository_urls=tuple(dict.fromkeys(urls)),
        ref=_ref(payload.get("ref")),
        before=before,
        after=after,
        created=before == ZERO_SHA,
        deleted=after == ZERO_SHA,
        commits=_commits(payload.get("commits"), id_key="id"),
    )
    return ParsedDelivery(DeliveryKind.PUSH, delivery_id, event, (push,))


def _parse_bitbucket_server(headers: Mapping[str, str], body: bytes) -> ParsedDelivery:
    """Bitbucket Server / Data Center: ``repo:refs_changed`` lists every ref one push changed."""
    event = headers.get("x-event-key")
    if event is None:
        raise WebhookError("missing X-Event-Key header")
    delivery_id = _delivery_id(headers.get("x-request-id"), body)
    if event == "diagnostics:ping":
        return ParsedDelivery(DeliveryKind.PING, delivery_id, event)
    if event != "repo:refs_changed":
        return _ignored(delivery_id, event)
    payload = _json_object(body)
    urls = _bitbucket_urls(_object(payload, "repository"))
    changes = payload.get("changes")
    if not isinstance(changes, list):
        raise WebhookError("'changes' is missing or not a list")
    pushes = []
    for change in changes:
        if not isinstance(change, dict):
            raise WebhookError("a change is not an object")
        ref = change.get("refId")
        if ref is None and isinstance(change.get("ref"), dict):
            ref = change["ref"].get("id")
        before = _sha(change, "fromHash")
        after = _sha(change, "toHash")
        kind = change.get("type")
        pushes.append(
            PushEvent(
                provider=str(Provider.BITBUCKET_SERVER),
                delivery_id=delivery_id,
                repository_urls=urls,
                ref=_ref(ref),
                before=before,
                after=after,
                created=kind == "ADD" or before == ZERO_SHA,
                deleted=kind == "DELETE" or after == ZERO_SHA,
            )
        )
    if not pushes:
        return ParsedDelivery(
            DeliveryKind.IGNORED, delivery_id, event, reason="the push changed no refs"
        )
    return ParsedDelivery(DeliveryKind.PUSH, delivery_id, event, tuple(pushes))


def _bitbucket_urls(repository: Mapping[str, Any]) -> tuple[str, ...]:
    """Clone links (http and ssh); older servers send only the browse link, from which the
    HTTP clone URL (``/scm/<project>/<slug>.git``) follows."""
    links = repository.get("links")
    urls: list[str] = []
    if isinstance(links, dict):
        urls = _hrefs(links.get("clone"))
        if not urls:
            for href in _hrefs(links.get("self")):
                found = re.match(r"(.*)/projects/([^/]+)/repos/([^/]+)", href)
                if found:
                    base, project, slug = found.groups()
                    urls.append(f"{base}/scm/{project.lower()}/{slug}.git")
    if not urls:
        raise WebhookError("payload names no repository URL")
    return tuple(urls)


def _hrefs(links: object) -> list[str]:
    if not isinstance(links, list):
        return []
    return [
        link["href"]
        for link in links
        if isinstance(link, dict) and isinstance(link.get("href"), str)
    ]


def _parse_generic(headers: Mapping[str, str], body: bytes) -> ParsedDelivery:
    """Our own minimal format for senders we have no parser for (see docs/webhooks.md)::

    {"repository": "<url>" | ["<url>", ...], "ref": "refs/heads/main",
     "after": "<sha>", "before": "<sha>"?, "forced": false?}
    """
    event = headers.get("x-event", "push")
    delivery_id = _delivery_id(headers.get("x-delivery"), body)
    if event == "ping":
        return ParsedDelivery(DeliveryKind.PING, delivery_id, event)
    if event != "push":
        return _ignored(delivery_id, event)
    payload = _json_object(body)
    repository = payload.get("repository")
    candidates = [repository] if isinstance(repository, str) else repository
    if not isinstance(candidates, list) or not candidates:
        raise WebhookError("'repository' must be a URL or a list of URLs")
    if not all(isinstance(url, str) and url.strip() for url in candidates):
        raise WebhookError("'repository' must be a URL or a list of URLs")
    after = _sha(payload, "after")
    before = _sha(payload, "before") if "before" in payload else ZERO_SHA
    push = PushEvent(
        provider=str(Provider.GENERIC_HMAC),
        delivery_id=delivery_id,
        repository_urls=tuple(dict.fromkeys(candidates)),
        ref=_ref(payload.get("ref")),
        before=before,
        after=after,
        created=_flag(payload, "created", default=False),
        deleted=_flag(payload, "deleted", default=after == ZERO_SHA),
        forced=_flag(payload, "forced", default=False),
    )
    return ParsedDelivery(DeliveryKind.PUSH, delivery_id, event, (push,))


# --- small readers: each raises WebhookError with a message that names a field, not a value ----


def _ignored(delivery_id: str, event: str) -> ParsedDelivery:
    reason = f"event {_quoted_name(event)} is not a push"
    shown = redact_text(event)[:_MAX_NAME]
    return ParsedDelivery(DeliveryKind.IGNORED, delivery_id, shown, reason=reason)


def _quoted_name(name: object) -> str:
    """A name from the delivery, as a reason may quote it: short, and redacted before it is
    cut (a cut URL would no longer be recognised as one)."""
    text = name if isinstance(name, str) else type(name).__name__
    return repr(redact_text(text)[:_MAX_NAME])


def _first_header(headers: Mapping[str, str], names: list[str]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None


def _delivery_id(given: str | None, body: bytes) -> str:
    """The sender's delivery id, or a stable one when it gives none (the same body is the same
    delivery). Long ids are hashed so the duplicate log stays small whatever a sender sends."""
    if not given:
        return "sha256:" + hashlib.sha256(body).hexdigest()
    if len(given) > _MAX_DELIVERY_ID:
        return "sha256:" + hashlib.sha256(given.encode("utf-8", "replace")).hexdigest()
    return given


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookError("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise WebhookError("body is not a JSON object")
    return payload


def _object(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if not isinstance(value, dict):
        raise WebhookError(f"'{key}' is missing or not an object")
    return value


def is_commit_sha(value: object) -> bool:
    """Whether ``value`` is a full commit id as Git servers send it: 40 (SHA-1) or 64 (SHA-256)
    lowercase hex digits. The one check of a SHA from outside (a payload, an annotation)."""
    return isinstance(value, str) and _SHA.fullmatch(value) is not None


def _sha(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not is_commit_sha(value):
        raise WebhookError(f"'{key}' is missing or not a commit SHA")
    return value


def _ref(value: object) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("refs/")
        or len(value) > _MAX_REF
        or _BAD_REF.search(value)
    ):
        raise WebhookError(
            "'ref' is missing or not a full ref name (refs/heads/..., refs/tags/...)"
        )
    return value


def _flag(payload: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = payload.get(key, default)
    if not isinstance(value, bool):
        raise WebhookError(f"'{key}' is not a boolean")
    return value


def _urls(
    repository: Mapping[str, Any], keys: tuple[str, ...], *, required: bool = True
) -> tuple[str, ...]:
    urls = [repository[k] for k in keys if isinstance(repository.get(k), str) and repository[k]]
    if required and not urls:
        raise WebhookError("payload names no repository URL")
    return tuple(dict.fromkeys(urls))


def _commits(value: object, *, id_key: str) -> tuple[PushedCommit, ...]:
    """The pushed commits, for logs and span attributes; entries without a SHA are skipped."""
    if not isinstance(value, list):
        return ()
    commits = []
    for entry in value:
        if not isinstance(entry, dict):
            continue
        sha = entry.get(id_key)
        if not isinstance(sha, str) or not is_commit_sha(sha):
            continue
        message = entry.get("message")
        author = entry.get("author")
        name = author.get("name") if isinstance(author, dict) else None
        commits.append(
            PushedCommit(
                sha=sha,
                message=message if isinstance(message, str) else "",
                author=name if isinstance(name, str) else "",
            )
        )
    return tuple(commits)
