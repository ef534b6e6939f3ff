"""Building a kubernetes_asyncio client the way kubectl finds its cluster."""

import os
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config


class KubeconfigError(Exception):
    """The kubeconfig is missing or unusable; the message names the file."""


def _has_kubeconfig() -> bool:
    return bool(os.environ.get("KUBECONFIG")) or (Path.home() / ".kube" / "config").exists()


async def connect(kubeconfig: Path | None = None, *, context: str | None = None) -> Any:
    """Return a kubernetes_asyncio ``ApiClient``, which the caller closes.

    Order as in kubectl/client-go: the given file, then $KUBECONFIG or ~/.kube/config, and only
    when there is none of those the in-cluster service account.
    """
    source = str(kubeconfig) if kubeconfig else "$KUBECONFIG or ~/.kube/config"
    try:
        if kubeconfig is None and not _has_kubeconfig():
            source = "the in-cluster service account"
            config.load_incluster_config()
            return client.ApiClient()
        return await config.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None, context=context
        )
    except (config.ConfigException, OSError) as e:
        raise KubeconfigError(f"cannot reach the cluster through {source}: {e}") from e
