"""Polling, the fallback for sources whose pushes send no webhook (or lose one).

Each source resolves its ref every ``interval_s`` (jittered by ±10 % so sources started together
do not poll together) and reports a SHA it has not reported before. A webhook wakes the loop so
the next resolve happens now instead of at the end of the wait.
"""

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn, Protocol

import anyio

from aioreconcile.engine.errors import AioreconcileError

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S: Final = 300.0
JITTER: Final = 0.1


class Resolver(Protocol):
    """What polling needs of a source (``GitSource`` is one)."""

    @property
    def url(self) -> str: ...

    async def resolve(self) -> str: ...


class Waker(Protocol):
    """Waits up to ``delay`` seconds; returns True when woken early."""

    async def wait(self, delay: float) -> bool: ...


class Wakeup:
    """A resettable event: ``set()`` from a webhook ends the current (or next) wait early."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._pending = False

    def set(self) -> None:
        self._pending = True
        if self._event is not None:
            self._event.set()

    async def wait(self, delay: float) -> bool:
        if not self._pending:
            self._event = anyio.Event()
            with anyio.move_on_after(delay):
                await self._event.wait()
            self._event = None
        woken, self._pending = self._pending, False
        return woken


def jittered(interval_s: float, *, uniform: Callable[[float, float], float]) -> float:
    """``interval_s`` moved by up to ±10 %."""
    return interval_s * (1.0 + uniform(-JITTER, JITTER))


async def poll_forever(
    source: Resolver,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    on_new_sha: Callable[[str], Awaitable[None]],
    wake: Waker,
    last_sha: str | None = None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> NoReturn:
    """Resolve, report a changed SHA, wait (or be woken), forever.

    A failed resolve is logged and retried at the next interval: the server being away is
    exactly when polling must keep going. ``last_sha`` is what the caller already has (no
    callback for it). An exception from ``on_new_sha`` ends the loop: that is the caller's
    failure to handle.
    """
    while True:
        try:
            sha = await source.resolve()
        except AioreconcileError as e:
            logger.warning("polling %s failed: %s", source.url, e)
        else:
            if sha != last_sha:
                logger.info("%s: new commit %s (was %s)", source.url, sha, last_sha)
                await on_new_sha(sha)
                last_sha = sha
        await wake.wait(jittered(interval_s, uniform=uniform))
