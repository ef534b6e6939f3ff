"""Polling: jittered waits, a callback per new SHA, a wake-up that skips the wait."""

import logging

import anyio
import pytest

from aioreconcile.adapters.git import FetchError, Wakeup, poll_forever
from aioreconcile.adapters.git.polling import jittered


class Stop(Exception):
    """Ends a poll loop from the fake waker."""


class ScriptedSource:
    """Resolves to the next item of ``script``; an exception in it is raised instead."""

    url = "https://git.example.com/app.git"

    def __init__(self, *script: str | Exception) -> None:
        self.script = list(script)

    async def resolve(self) -> str:
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


class CountingWaker:
    """Records each wait's length and stops the loop after ``rounds`` waits."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.delays: list[float] = []

    async def wait(self, delay: float) -> bool:
        self.delays.append(delay)
        if len(self.delays) >= self.rounds:
            raise Stop
        return False


async def run(source: ScriptedSource, waker: CountingWaker, **kwargs: object) -> list[str]:
    seen: list[str] = []

    async def on_new_sha(sha: str) -> None:
        seen.append(sha)

    with pytest.raises(Stop):
        await poll_forever(
            source,
            interval_s=100.0,
            on_new_sha=on_new_sha,
            wake=waker,
            **kwargs,  # type: ignore[arg-type]
        )
    return seen


async def test_callback_only_for_a_changed_sha() -> None:
    source = ScriptedSource("a", "a", "b", "b", "a")
    seen = await run(source, CountingWaker(rounds=5), uniform=lambda lo, hi: 0.0)
    assert seen == ["a", "b", "a"]


async def test_known_sha_is_not_reported_again() -> None:
    seen = await run(ScriptedSource("a", "b"), CountingWaker(rounds=2), last_sha="a")
    assert seen == ["b"]


async def test_waits_are_jittered_within_ten_percent() -> None:
    waker = CountingWaker(rounds=3)
    draws = iter([-0.1, 0.0, 0.1])
    await run(ScriptedSource("a", "a", "a"), waker, uniform=lambda lo, hi: next(draws))
    assert waker.delays == pytest.approx([90.0, 100.0, 110.0])
    assert jittered(100.0, uniform=lambda lo, hi: hi) == pytest.approx(110.0)
    assert jittered(100.0, uniform=lambda lo, hi: lo) == pytest.approx(90.0)


async def test_failed_resolve_is_logged_and_polling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = ScriptedSource("a", FetchError("server away"), "b")
    seen = await run(source, CountingWaker(rounds=3))
    assert seen == ["a", "b"]
    assert "server away" in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records)


async def test_wakeup_ends_the_wait_early() -> None:
    wake = Wakeup()
    woken: list[bool] = []

    async def waiter() -> None:
        woken.append(await wake.wait(30.0))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.sleep(0.05)
            wake.set()
    assert woken == [True]
    assert await wake.wait(0.01) is False


async def test_wakeup_before_the_wait_is_not_lost() -> None:
    wake = Wakeup()
    wake.set()
    with anyio.fail_after(1):
        assert await wake.wait(30.0) is True


async def test_a_webhook_wakes_the_poll_loop_at_once() -> None:
    wake = Wakeup()
    resolved = anyio.Event()
    calls = 0

    class Source:
        url = "https://git.example.com/app.git"

        async def resolve(self) -> str:
            nonlocal calls
            calls += 1
            if calls == 2:
                resolved.set()
            return f"sha{calls}"

    async def on_new_sha(sha: str) -> None:
        pass

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(
                lambda: poll_forever(Source(), interval_s=3600, on_new_sha=on_new_sha, wake=wake)
            )
            await anyio.sleep(0.05)
            wake.set()
            await resolved.wait()
            group.cancel_scope.cancel()
    assert calls == 2
