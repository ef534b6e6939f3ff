"""The Kubernetes API through kubernetes_asyncio: connect, discover, apply, watch."""
