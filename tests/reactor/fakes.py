"""Fakes for reactor tests: time that moves only when the test says so; a Git source."""

import heapq
import itertools
from collections.abc import Iterable
from pathlib import Path

import anyio
import anyio.lowlevel

from aioreconcile.engine.errors import VerificationError


class FakeClock:
    """A ``Clock`` whose ``sleep`` returns only when ``advance`` moves time past its deadline.

    ``advance`` wakes sleepers in deadline order, letting every task run to its next block after
    each wake-up, so a chain of sleeps (a backoff sequence) plays out exactly as in real time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []  # every positive sleep requested, for assertions

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        self.sleeps.append(seconds)
        woken = anyio.Event()
        entry = (self._now + seconds, next(self._seq), woken)
        heapq.heappush(self._sleepers, entry)
        try:
            await woken.wait()
        finally:
            if not woken.is_set():  # cancelled: forget the sleeper
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    async def advance(self, seconds: float) -> None:
        target = self._now + seconds
        await anyio.wait_all_tasks_blocked()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, woken = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            woken.set()
            await anyio.wait_all_tasks_blocked()
        self._now = target
        await anyio.wait_all_tasks_blocked()

    async def settle(self) -> None:
        """Let every task run until it blocks, without moving time."""
        await anyio.wait_all_tasks_blocked()


class FakeGitSource:
    """A ``GitSource`` whose ref head and history the test sets (the real adapter is tested
    against git servers in tests/git). ``refuse`` makes every commit fail verification, so a
    reconcile stops after the fetch without needing a cluster."""

    def __init__(self, head: str, *, history: Iterable[tuple[str, str]] = ()) -> None:
        self.head = head
        self.history = set(history)  # (ancestor, descendant) pairs
        self.fetches = 0
        self.refuse = True

    async def resolve(self) -> str:
        return self.head

    async def fetch(self) -> str:
        self.fetches += 1
        return self.head

    async def is_ancestor(self, ancestor: str, commit: str) -> bool | None:
        return ancestor == commit or (ancestor, commit) in self.history

    async def verify(self, sha: str) -> None:
        if self.refuse:
            raise VerificationError(f"commit {sha} is not signed")

    async def checkout(self, sha: str) -> Path:
        raise AssertionError("a refused commit is never laid out")

    async def commit_info(self, sha: str) -> tuple[str, str]:
        return ("Ada Author <ada@example.com>", "change")
