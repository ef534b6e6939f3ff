"""Fuzz a webhook delivery, per provider: headers and body -> verify -> parse -> match.

Run: ``python -m fuzz.webhook -runs=100000`` or ``-max_total_time=300``.

An input is a delivery written as text: the provider on the first line, then header lines
(``Name: value``), an empty line, and the body. When the headers carry no signature the target
signs the body with the receiver's secret, as the provider would, so most inputs get past
``verify`` and into the parser; an input that carries one exercises ``verify`` itself.

What must hold, as ``adapters.webhook.receiving`` relies on it: ``verify`` answers a bool and
never raises; ``parse`` returns a ``ParsedDelivery`` or raises ``WebhookError`` (the 400
answer) and nothing else; matching the pushes against syncs never raises; no reason or error
quotes a credential (harness.check_error).
"""

import json
from collections.abc import Iterator

from aioreconcile.engine.config import GitSourceSpec, Provider, ReceiverSpec, SyncSpec
from aioreconcile.engine.matching import normalise_repository_url, triggers_for
from aioreconcile.engine.redaction import printable
from aioreconcile.engine.webhooks import (
    _SIGNATURE_HEADERS,
    DeliveryKind,
    WebhookError,
    parse,
    sign,
    signature_header,
    verify,
)
from fuzz.harness import (
    FIXTURES,
    PLANTED,
    InvariantBroken,
    check_error,
    planted_as_credential,
    run,
)

SECRET = b"fuzz-receiver-secret"
_PROVIDERS = {str(p): p for p in Provider}
_SYNCS = (
    SyncSpec(
        name="app",
        source=GitSourceSpec(url="https://git.example.com/acme/deploy-config.git", ref="main"),
        labels={"team": "a"},
    ),
    SyncSpec(
        name="infra",
        source=GitSourceSpec(url="git@git.example.com:acme/deploy-config.git", ref="v1.2.0"),
    ),
    SyncSpec(
        name="paused",
        source=GitSourceSpec(url="ssh://git@git.example.com:7999/acme/deploy-config.git"),
        suspend=True,
    ),
)
_RECEIVER = ReceiverSpec(
    name="hooks", provider=Provider.GITHUB, syncs=("infra", "paused"), selector={"team": "a"}
)


def decode(data: bytes) -> tuple[Provider, dict[str, str], bytes]:
    """(provider, headers, body) of an input; lenient: every input decodes to something."""
    head, _, body = data.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").split("\n")
    providers = list(Provider)
    provider = _PROVIDERS.get(lines[0].strip()) or providers[len(lines[0]) % len(providers)]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return provider, headers, body


def encode(provider: Provider, headers: dict[str, str], body: bytes) -> bytes:
    lines = [str(provider), *(f"{k}: {v}" for k, v in headers.items())]
    return "\n".join(lines).encode() + b"\n\n" + body


def signed(provider: Provider, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """``headers`` with the provider's signature of ``body`` when they carry none."""
    lowered = {k.lower() for k in headers}
    if any(h.lower() in lowered for h in _SIGNATURE_HEADERS[provider]):
        return headers
    value = SECRET.decode() if provider is Provider.GITLAB else sign(SECRET, body)
    if provider in (Provider.GITHUB, Provider.BITBUCKET_SERVER, Provider.GENERIC_HMAC):
        value = f"sha256={value}"
    return {**headers, signature_header(provider): value}


def exercise(provider: Provider, headers: dict[str, str], body: bytes) -> None:
    """One delivery through everything pure the receiver does with it."""
    headers = signed(provider, headers, body)
    sent = "\n".join([*(f"{k}: {v}" for k, v in headers.items()), body.decode("utf-8", "replace")])
    planted = planted_as_credential(sent)
    verified = verify(provider, headers, body, SECRET)
    if not isinstance(verified, bool):
        raise InvariantBroken(f"verify answered {verified!r}")
    if verify(provider, headers, body, b""):
        raise InvariantBroken("an empty secret verified a delivery")
    try:
        delivery = parse(provider, headers, body)
    except WebhookError as e:
        check_error(e, planted=planted)
        return
    check_error(WebhookError(delivery.reason or "no reason"), planted=planted)
    printable(delivery.delivery_id)
    printable(delivery.event)
    if delivery.kind is not DeliveryKind.PUSH:
        if delivery.pushes:
            raise InvariantBroken(f"a {delivery.kind} delivery carries pushes")
        return
    if not delivery.pushes:
        raise InvariantBroken("a push delivery without pushes")
    for push in delivery.pushes:
        if not push.repository_urls:
            raise InvariantBroken("a push naming no repository")
        printable(normalise_repository_url(push.repository_urls[0]))
        printable(push.ref)
    triggers, reasons = triggers_for(delivery.pushes, _SYNCS, receiver=_RECEIVER)
    for reason in reasons:
        check_error(WebhookError(reason), planted=planted)
    if len({t.sync for t in triggers}) != len(triggers):
        raise InvariantBroken("a sync triggered twice by one delivery")


def test_one_input(data: bytes) -> None:
    exercise(*decode(data))


def seeds() -> Iterator[bytes]:
    """Every provider delivery the tests hold, as is and with a credential in its URLs."""
    for path in sorted((FIXTURES / "webhooks").glob("*.json")):
        case = json.loads(path.read_text())
        provider = Provider(case["provider"])
        body = json.dumps(case["payload"], indent=1).encode()
        yield encode(provider, case["headers"], body)
        planted = body.replace(b"https://", f"https://bot:{PLANTED}@".encode())
        yield encode(provider, case["headers"], planted)


if __name__ == "__main__":
    run("webhook", test_one_input, seeds())
