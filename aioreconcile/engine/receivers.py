"""Where a Receiver custom resource is served: its URL path, derived from its secret.

A Receiver's path must not be guessable from its name alone, or anyone who knows the name could
flood it with deliveries that each cost a signature check. Flux's notification-controller
derives it as ``/hook/`` + ``sha256(token + name + namespace)`` (``Receiver.GetWebhookPath``,
fluxcd/notification-controller ``api/v1/receiver_types.go``). We do the same under our
``/hooks/`` prefix, with one change: the three parts are joined by ``/``, which a Kubernetes
name or namespace cannot contain. Flux's plain concatenation gives the Receivers ``ab`` in
namespace ``c`` and ``a`` in namespace ``bc`` the same path when they share a token; with the
separator, name and namespace are the last two ``/``-separated parts and never collide.

The path is not a credential (the signature is what authenticates a delivery), but it changes
when the token is rotated, which is why the controller writes it into ``status.webhookPath``.
"""

import hashlib
from typing import Final

WEBHOOK_PATH_PREFIX: Final = "/hooks/"


def webhook_path(name: str, namespace: str, *, token: str) -> str:
    """``/hooks/<hex sha256 of token/name/namespace>`` for the Receiver ``namespace/name``.

    ``token`` is the value of the ``token`` key of the Receiver's Secret, exactly as stored.
    """
    digest = hashlib.sha256(f"{token}/{name}/{namespace}".encode()).hexdigest()
    return f"{WEBHOOK_PATH_PREFIX}{digest}"
