"""Webhook receivers (aiohttp): verify, normalise to a PushEvent, enqueue."""
