"""The only homes of kubernetes_asyncio, aiohttp, git and OpenTelemetry.

Each adapter maps its library's exceptions to ours at the edge, so nothing above sees them.
"""
