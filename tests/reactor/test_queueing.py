"""The work queue: coalescing, one serial lane per key, a global limit, backoff on fake time,
draining, idle lanes exiting, and the metrics it keeps."""

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

from aioreconcile.engine.metrics import Registry
from aioreconcile.reactor.queueing import Backoff, WorkQueue
from tests.reactor.fakes import FakeClock

BACKOFF = Backoff(initial_s=0.1, factor=2.0, cap_s=1.0, jitter=0.2)


def middle() -> float:
    """A ``random`` that puts every jittered delay exactly in the middle of its range."""
    return 0.5


class Recorder:
    """A process function that records calls and catches a key overlapping with itself."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, float]] = []
        self.running: set[str] = set()
        self.overlaps = 0
        self.max_concurrent = 0
        self.gates: dict[str, anyio.Event] = {}  # a key with a gate waits until it is set
        self.failures_left: dict[str, int] = {}  # a key fails this many more times
        self.always_fail: set[str] = set()

    async def __call__(self, key: str) -> None:
        if key in self.running:
            self.overlaps += 1
        self.running.add(key)
        self.max_concurrent = max(self.max_concurrent, len(self.running))
        try:
            self.calls.append((key, self.clock.now()))
            gate = self.gates.get(key)
            if gate is not None:
                await gate.wait()
            if key in self.always_fail or self.failures_left.get(key, 0) > 0:
                self.failures_left[key] = self.failures_left.get(key, 0) - 1
                raise RuntimeError(f"{key} is broken")
        finally:
            self.running.discard(key)

    def keys(self) -> list[str]:
        return [key for key, _ in self.calls]

    def times(self, key: str) -> list[float]:
        return [round(t - 1000.0, 6) for k, t in self.calls if k == key]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


@pytest.fixture
def recorder(clock: FakeClock) -> Recorder:
    return Recorder(clock)


@asynccontextmanager
async def running(queue: WorkQueue[str]) -> AsyncIterator[WorkQueue[str]]:
    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        yield queue
        tg.cancel_scope.cancel()


def make_queue(
    recorder: Recorder,
    clock: FakeClock,
    *,
    concurrency: int = 16,
    backoff: Backoff = BACKOFF,
    registry: Registry | None = None,
) -> WorkQueue[str]:
    return WorkQueue(
        recorder,
        concurrency=concurrency,
        backoff=backoff,
        clock=clock,
        random=middle,
        registry=registry if registry is not None else Registry(),
    )


# --- coalescing and serial lanes ------------------------------------------------------------------


async def test_ten_puts_while_waiting_coalesce_into_one_run(
    recorder: Recorder, clock: FakeClock
) -> None:
    queue = make_queue(recorder, clock)
    for _ in range(10):
        queue.put("a")

    assert queue.depth == 1
    async with running(queue):
        await clock.settle()

    assert recorder.keys() == ["a"]


async def test_puts_while_running_make_exactly_one_more_run_never_concurrent_with_itself(
    recorder: Recorder, clock: FakeClock
) -> None:
    recorder.gates["a"] = anyio.Event()
    queue = make_queue(recorder, clock)
    async with running(queue):
        queue.put("a")
        await clock.settle()
        assert queue.in_flight == 1
        for _ in range(5):
            queue.put("a")
        await clock.settle()
        assert recorder.keys() == ["a"]

        recorder.gates["a"].set()
        await clock.settle()

    assert recorder.keys() == ["a", "a"]
    assert recorder.overlaps == 0


async def test_keys_run_in_parallel_up_to_the_limit_and_not_beyond(
    recorder: Recorder, clock: FakeClock
) -> None:
    gate = anyio.Event()
    keys = [f"k{i}" for i in range(10)]
    recorder.gates.update(dict.fromkeys(keys, gate))
    queue = make_queue(recorder, clock, concurrency=3)
    async with running(queue):
        for key in keys:
            queue.put(key)
        await clock.settle()
        assert queue.in_flight == 3
        assert queue.depth == 7

        gate.set()
        await clock.settle()

    assert sorted(recorder.keys()) == keys
    assert recorder.max_concurrent == 3


async def test_a_slow_key_does_not_delay_other_keys(recorder: Recorder, clock: FakeClock) -> None:
    recorder.gates["slow"] = anyio.Event()
    queue = make_queue(recorder, clock, concurrency=2)
    async with running(queue):
        queue.put("slow")
        await clock.settle()
        for round_ in range(3):
            for key in ("a", "b", "c"):
                queue.put(key)
            await clock.settle()
            assert recorder.keys().count("a") == round_ + 1

        assert recorder.running == {"slow"}
        recorder.gates["slow"].set()


async def test_a_burst_for_one_key_does_not_block_other_keys(
    recorder: Recorder, clock: FakeClock
) -> None:
    recorder.gates["busy"] = anyio.Event()
    queue = make_queue(recorder, clock, concurrency=2)
    async with running(queue):
        queue.put("busy")
        await clock.settle()
        for _ in range(1000):
            queue.put("busy")
        queue.put("other")
        await clock.settle()

        assert recorder.keys() == ["busy", "other"]
        recorder.gates["busy"].set()
        await clock.settle()

    assert recorder.keys() == ["busy", "other", "busy"]


async def test_a_pool_has_its_own_limit_so_a_full_pool_never_holds_other_keys(
    recorder: Recorder, clock: FakeClock
) -> None:
    gate = anyio.Event()
    storm = [f"heal-{i}" for i in range(50)]
    recorder.gates.update(dict.fromkeys(storm, gate))
    queue: WorkQueue[str] = WorkQueue(
        recorder,
        concurrency=2,
        pools={"heals": 3},
        pool_of=lambda key: "heals" if key.startswith("heal-") else None,
        clock=clock,
        registry=Registry(),
    )
    async with running(queue):
        for key in storm:
            queue.put(key)
        await clock.settle()
        assert queue.in_flight == 3  # the pool's limit, not the queue's

        queue.put("push")  # due after all 50: still runs at once
        queue.put("poll")
        await clock.settle()
        assert {"push", "poll"} <= set(recorder.keys())
        called = recorder.keys()
        assert len([k for k in called if k.startswith("heal-")]) == 3

        gate.set()
        await clock.settle()

    called = recorder.keys()
    assert sorted(k for k in called if k.startswith("heal-")) == sorted(storm)


async def test_a_pool_limit_changed_while_running_holds_new_runs_and_gives_slots_back(
    recorder: Recorder, clock: FakeClock
) -> None:
    gate = anyio.Event()
    storm = [f"heal-{i}" for i in range(20)]
    recorder.gates.update(dict.fromkeys(storm, gate))
    queue: WorkQueue[str] = WorkQueue(
        recorder,
        pools={"heals": 6},
        pool_of=lambda key: "heals",
        clock=clock,
        registry=Registry(),
    )
    async with running(queue):
        queue.set_limit("heals", 2)
        for key in storm:
            queue.put(key)
        await clock.settle()
        assert queue.in_flight == 2

        queue.set_limit("heals", 6)
        await clock.settle()
        assert queue.in_flight == 6
        gate.set()
        await clock.settle()

    assert len(recorder.keys()) == 20
    with pytest.raises(KeyError):
        queue.set_limit("pushes", 1)


def test_a_pool_limit_below_one_is_refused(recorder: Recorder) -> None:
    with pytest.raises(ValueError, match="heals must be >= 1"):
        WorkQueue(recorder, pools={"heals": 0}, registry=Registry())


# --- backoff ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "random", "expected"),
    [
        (1, 0.5, 0.1),
        (2, 0.5, 0.2),
        (3, 0.5, 0.4),
        (4, 0.5, 0.8),
        (5, 0.5, 1.0),
        (10_000, 0.5, 1.0),
        (1, 0.0, 0.08),
        (1, 1.0, 0.12),
        (5, 0.0, 0.8),
    ],
)
def test_backoff_doubles_up_to_the_cap_and_jitters_by_twenty_percent(
    failures: int, random: float, expected: float
) -> None:
    assert BACKOFF.delay(failures, random=lambda: random) == pytest.approx(expected)


@pytest.mark.parametrize(
    "bad",
    [
        {"initial_s": -1.0},
        {"initial_s": 2.0, "cap_s": 1.0},
        {"factor": 0.5},
        {"jitter": 1.0},
    ],
)
def test_backoff_refuses_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- each case has its own message
        Backoff(**bad)


async def test_failures_are_retried_after_a_growing_capped_backoff(
    recorder: Recorder, clock: FakeClock
) -> None:
    recorder.always_fail.add("a")
    queue = make_queue(recorder, clock)
    async with running(queue):
        queue.put("a")
        await clock.advance(4.0)

    times = recorder.times("a")
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps[:6] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


async def test_a_success_resets_the_failure_count(recorder: Recorder, clock: FakeClock) -> None:
    recorder.failures_left["a"] = 3
    queue = make_queue(recorder, clock)
    async with running(queue):
        queue.put("a")
        await clock.advance(1.0)
        assert recorder.times("a") == [0.0, 0.1, 0.3, 0.7]  # three failures, then a success

        recorder.failures_left["a"] = 1
        queue.put("a")
        await clock.settle()
        await clock.advance(0.1)

    assert recorder.times("a") == [0.0, 0.1, 0.3, 0.7, 1.0, 1.1]
    assert queue._failures == {}


async def test_a_new_put_cuts_a_pending_backoff_but_keeps_the_failure_count(
    recorder: Recorder, clock: FakeClock
) -> None:
    recorder.always_fail.add("a")
    queue = make_queue(recorder, clock, backoff=Backoff(initial_s=10, cap_s=100, jitter=0))
    async with running(queue):
        queue.put("a")
        await clock.settle()
        assert recorder.times("a") == [0.0]
        assert queue.depth == 1  # the retry, ten seconds out

        await clock.advance(1.0)
        queue.put("a")
        await clock.settle()
        assert recorder.times("a") == [0.0, 1.0]

        await clock.advance(19.9)
        assert recorder.times("a") == [0.0, 1.0]  # second failure: twenty seconds
        await clock.advance(0.1)

    assert recorder.times("a") == [0.0, 1.0, 21.0]


async def test_a_put_during_a_failing_run_is_the_retry_without_waiting(
    recorder: Recorder, clock: FakeClock
) -> None:
    recorder.gates["a"] = anyio.Event()
    recorder.failures_left["a"] = 1
    queue = make_queue(recorder, clock, backoff=Backoff(initial_s=10, cap_s=100, jitter=0))
    async with running(queue):
        queue.put("a")
        await clock.settle()
        queue.put("a")
        recorder.gates["a"].set()
        await clock.settle()
        await clock.advance(30)

    assert recorder.times("a") == [0.0, 0.0]


# --- delays ---------------------------------------------------------------------------------------


async def test_a_delayed_put_runs_when_due_and_not_before(
    recorder: Recorder, clock: FakeClock
) -> None:
    queue = make_queue(recorder, clock)
    async with running(queue):
        queue.put("a", delay_s=5)
        await clock.advance(4.9)
        assert recorder.calls == []
        await clock.advance(0.1)

    assert recorder.times("a") == [5.0]


@pytest.mark.parametrize("delays", [(5.0, 2.0), (2.0, 5.0)])
async def test_the_earliest_due_time_wins_when_coalescing(
    recorder: Recorder, clock: FakeClock, delays: tuple[float, float]
) -> None:
    queue = make_queue(recorder, clock)
    async with running(queue):
        for delay in delays:
            queue.put("a", delay_s=delay)
        await clock.advance(10)

    assert recorder.times("a") == [2.0]


async def test_the_real_loop_clock_runs_a_delayed_put() -> None:
    done = anyio.Event()

    async def process(key: str) -> None:
        done.set()

    queue: WorkQueue[str] = WorkQueue(process, registry=Registry())
    async with running(queue):
        queue.put("a", delay_s=0.01)
        with anyio.fail_after(5):
            await done.wait()


# --- draining and shutdown ------------------------------------------------------------------------


async def test_drain_waits_for_in_flight_work_and_refuses_new_keys(
    recorder: Recorder, clock: FakeClock
) -> None:
    registry = Registry()
    recorder.gates["a"] = anyio.Event()
    queue = make_queue(recorder, clock, registry=registry)
    results: list[bool] = []
    async with running(queue), anyio.create_task_group() as tg:
        queue.put("a")
        await clock.settle()

        async def drain() -> None:
            results.append(await queue.drain(timeout_s=60))

        tg.start_soon(drain)
        await clock.settle()
        queue.put("b")
        await clock.settle()
        assert results == []

        recorder.gates["a"].set()
        await clock.settle()

    assert results == [True]
    assert recorder.keys() == ["a"]
    assert 'aioreconcile_queue_dropped_total{queue="work"} 1.0' in registry.exposition()


async def test_drain_gives_up_after_its_timeout(recorder: Recorder, clock: FakeClock) -> None:
    recorder.gates["a"] = anyio.Event()
    queue = make_queue(recorder, clock)
    results: list[bool] = []
    async with running(queue), anyio.create_task_group() as tg:
        queue.put("a")

        async def drain() -> None:
            results.append(await queue.drain(timeout_s=5))

        tg.start_soon(drain)
        await clock.advance(4.9)
        assert results == []
        await clock.advance(0.1)
        assert results == [False]
        recorder.gates["a"].set()


async def test_drain_does_not_wait_for_keys_scheduled_later(
    recorder: Recorder, clock: FakeClock
) -> None:
    queue = make_queue(recorder, clock)
    async with running(queue):
        queue.put("later", delay_s=60)
        with anyio.fail_after(1):
            assert await queue.drain(timeout_s=120)

    assert recorder.calls == []


async def test_cancelling_run_cancels_in_flight_work(recorder: Recorder, clock: FakeClock) -> None:
    recorder.gates["a"] = anyio.Event()
    queue = make_queue(recorder, clock)
    async with running(queue):
        queue.put("a")
        await clock.settle()
        assert queue.in_flight == 1

    assert queue.in_flight == 0
    assert recorder.running == set()


# --- memory ---------------------------------------------------------------------------------------


async def test_idle_lanes_exit_so_ten_thousand_keys_leave_nothing_behind(
    recorder: Recorder, clock: FakeClock
) -> None:
    queue = make_queue(recorder, clock, concurrency=64)
    async with running(queue):
        for i in range(10_000):
            queue.put(f"k{i}")
            queue.put(f"k{i}")
        await clock.settle()

        assert len(recorder.calls) == 10_000
        assert queue._lanes == set()
        assert queue._due == {}
        assert queue._heap == []
        assert queue._failures == {}
        assert (queue.depth, queue.in_flight) == (0, 0)


async def test_repeated_delayed_re_puts_do_not_grow_the_schedule(
    recorder: Recorder, clock: FakeClock
) -> None:
    queue = make_queue(recorder, clock)
    for i in range(10_000):
        queue.put("a", delay_s=10_000 - i)

    assert len(queue._heap) < 200


# --- metrics --------------------------------------------------------------------------------------


async def test_metrics_show_depth_wait_retries_and_results(
    recorder: Recorder, clock: FakeClock
) -> None:
    registry = Registry()
    recorder.failures_left["flaky"] = 1
    recorder.gates["first"] = anyio.Event()
    queue = make_queue(recorder, clock, concurrency=1, registry=registry)
    async with running(queue):
        queue.put("first")
        await clock.settle()
        queue.put("flaky")  # waits 3 s behind "first" for the only slot
        queue.put("later", delay_s=3600)
        await clock.advance(3)
        recorder.gates["first"].set()
        await clock.settle()  # flaky fails, retried after 0.1 s
        await clock.advance(0.1)

    text = registry.exposition()
    assert 'aioreconcile_queue_depth{queue="work"} 1.0' in text  # "later" still waits
    assert 'aioreconcile_queue_retries_total{queue="work"} 1.0' in text
    assert 'aioreconcile_queue_processed_total{queue="work",result="success"} 2.0' in text
    assert 'aioreconcile_queue_processed_total{queue="work",result="failure"} 1.0' in text
    assert 'aioreconcile_queue_wait_seconds_count{queue="work"} 3.0' in text
    assert 'aioreconcile_queue_wait_seconds_sum{queue="work"} 3.0' in text
    assert 'aioreconcile_queue_wait_seconds_bucket{queue="work",le="2.5"} 2.0' in text


async def test_two_queues_share_a_registry_told_apart_by_name(
    recorder: Recorder, clock: FakeClock
) -> None:
    registry = Registry()
    first: WorkQueue[str] = WorkQueue(recorder, clock=clock, registry=registry, name="sources")
    second: WorkQueue[str] = WorkQueue(recorder, clock=clock, registry=registry, name="objects")
    first.put("a")
    second.put("b")
    second.put("c")

    text = registry.exposition()
    assert 'aioreconcile_queue_depth{queue="sources"} 1.0' in text
    assert 'aioreconcile_queue_depth{queue="objects"} 2.0' in text


class SteppingClock:
    """A clock that moves on at every reading, as a busy loop's does between two readings;
    ``sleep`` refuses a negative delay, as ``anyio.sleep`` does."""

    def __init__(self) -> None:
        self.readings = itertools.count()

    def now(self) -> float:
        return next(self.readings) * 0.01

    async def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be a non-negative number")
        await anyio.lowlevel.checkpoint()


async def test_a_key_falling_due_between_two_clock_readings_never_means_a_negative_wait() -> None:
    ran: list[str] = []

    async def process(key: str) -> None:
        ran.append(key)

    queue: WorkQueue[str] = WorkQueue(process, clock=SteppingClock(), registry=Registry())
    with anyio.fail_after(5):
        async with running(queue):
            # Due one reading after the dispatcher's "now": it is not started, and the next
            # reading (for the wait) is already past it.
            queue.put("a", delay_s=0.015)
            while not ran:
                await anyio.lowlevel.checkpoint()
    assert ran == ["a"]


async def test_busy_besides_a_key_sees_other_running_and_due_work_but_not_later_work(
    recorder: Recorder, clock: FakeClock
) -> None:
    queue = make_queue(recorder, clock, concurrency=1)
    recorder.gates["a"] = anyio.Event()
    async with running(queue):
        queue.put("a")
        await clock.settle()
        assert not queue.busy_besides("a")  # only "a" runs
        assert queue.busy_besides("b")

        queue.put("later", delay_s=30)  # a retry or delayed put, not work now
        assert not queue.busy_besides("a")

        queue.put("b")  # due now, waiting for the one slot
        await clock.settle()
        assert queue.busy_besides("a")

        recorder.gates["a"].set()
        await clock.settle()
        assert recorder.keys() == ["a", "b"]
        assert not queue.busy_besides("b")  # "b" has run; "later" is not due
