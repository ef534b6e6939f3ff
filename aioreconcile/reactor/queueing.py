"""The work queue: one serial lane per key, parallel across keys, coalescing and backoff.

Every trigger becomes a key (an object for a drift, a source for whole-source work). The rules,
learnt from kopf's per-object workers:

* A key is never processed concurrently with itself: there is at most one lane (task) per key.
* Puts coalesce. A key put while it waits runs once; a key put while it runs is "dirty" and runs
  exactly once more after the current run, so the latest state is always seen.
* Lanes run in parallel under one global ``CapacityLimiter``; a burst for one key never holds up
  another. A lane exits as soon as its key has nothing due, so memory follows the work, not the
  number of keys ever seen.
* Keys of a named pool (``pools``, ``pool_of``) run under that pool's own limit instead, so a
  burst of one kind of work cannot take every slot from another: a storm of a thousand drift
  heals, each key due before a push arrived, would otherwise hold the push behind all of them
  (the limiter is FIFO). Argo CD's application controller splits its workers the same way
  (``--status-processors`` for refreshes, ``--operation-processors`` for syncs), as the
  apiserver's Priority and Fairness gives each priority level its own concurrency share.
* The earliest due time wins, everywhere. A failure schedules a retry after a jittered
  exponential backoff, but if the key is already due sooner (it was put while it ran) the retry
  changes nothing: a retry never postpones nor duplicates a run. An outside put while a retry is
  pending moves it to the put's (usually "now") due time, so a new push never waits behind an old
  failure's backoff; an outside put due later than the retry leaves the retry alone. The failure
  count survives such a cut, so a key that keeps failing still backs off further; it resets only
  on success.
* Time comes from an injected ``Clock`` so tests drive backoff with a fake one.
"""

import heapq
import logging
import math
import random as _random
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import anyio
import anyio.abc

from aioreconcile.engine.metrics import REGISTRY, Registry

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Backoff:
    """``initial * factor**(failures-1)``, capped, then spread by ``±jitter`` so that many keys
    failing together (an API server restart) do not retry in lockstep. The cap is the centre of
    the jittered range, so a capped delay may exceed ``cap_s`` by up to ``jitter``."""

    initial_s: float = 0.1
    factor: float = 2.0
    cap_s: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.initial_s <= self.cap_s:
            raise ValueError(f"need 0 <= initial_s <= cap_s, got {self}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def delay(self, failures: int, *, random: Callable[[], float]) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based).

        ``random`` returns a float in [0, 1); 0.5 means no jitter.
        """
        if failures < 1:
            raise ValueError(f"failures is 1-based, got {failures}")
        try:
            base = self.initial_s * self.factor ** (failures - 1)
        except OverflowError:
            base = self.cap_s
        base = min(base, self.cap_s)
        return base * (1 + self.jitter * (2 * random() - 1))


class Clock(Protocol):
    """Monotonic seconds and a way to wait for them; injected so tests can fake time."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class WorkQueue(Generic[K]):
    """Keys in, ``process(key)`` calls out, under the rules in the module docstring.

    ``depth`` counts keys waiting for a run, whether due now, scheduled for later (delayed puts
    and pending retries) or put again while running; ``in_flight`` counts keys whose ``process``
    is executing.

    ``concurrency`` limits the keys of no pool; ``pools`` maps a pool's name to its own limit and
    ``pool_of(key)`` names the pool of a key (None, or a name not in ``pools``: no pool).
    """

    def __init__(
        self,
        process: Callable[[K], Awaitable[None]],
        *,
        concurrency: int = 16,
        pools: Mapping[str, int] | None = None,
        pool_of: Callable[[K], str | None] | None = None,
        backoff: Backoff = Backoff(),  # frozen, so sharing the default is safe
        clock: Clock | None = None,
        random: Callable[[], float] = _random.random,
        registry: Registry | None = None,
        name: str = "work",
    ) -> None:
        limits = {"": concurrency, **(pools or {})}
        for pool, limit in limits.items():
            if limit < 1:
                raise ValueError(f"concurrency {pool or 'of the queue'} must be >= 1, got {limit}")
        self._process = process
        self._limits = limits
        self._pool_of = pool_of
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        self._backoff = backoff
        self._clock: Clock = clock if clock is not None else LoopClock()
        self._random = random
        self._name = name

        self._due: dict[K, float] = {}  # waiting keys -> when they may start
        self._heap: list[tuple[float, int, K]] = []  # (due, seq, key); stale entries skipped
        self._seq = 0
        self._lanes: set[K] = set()  # keys with a lane task (waiting for capacity or running)
        self._running: set[K] = set()
        self._failures: dict[K, int] = {}
        self._draining = False
        self._changed: anyio.Event | None = None
        self._started = False

        registry = registry if registry is not None else REGISTRY
        labels = {"queue": name}
        self._depth_gauge = registry.gauge(
            "aioreconcile_queue_depth", "Keys waiting in the work queue.", ["queue"]
        ).labels(**labels)
        self._wait_hist = registry.histogram(
            "aioreconcile_queue_wait_seconds",
            "Seconds from a key becoming due to its processing starting.",
            ["queue"],
        ).labels(**labels)
        self._retries = registry.counter(
            "aioreconcile_queue_retries_total",
            "Failed runs scheduled again after a backoff.",
            ["queue"],
        ).labels(**labels)
        processed = registry.counter(
            "aioreconcile_queue_processed_total",
            "Runs of the process function, by result.",
            ["queue", "result"],
        )
        self._succeeded = processed.labels(queue=name, result="success")
        self._failed = processed.labels(queue=name, result="failure")
        self._dropped = registry.counter(
            "aioreconcile_queue_dropped_total",
            "Puts refused because the queue was draining.",
            ["queue"],
        ).labels(**labels)

    @property
    def depth(self) -> int:
        return len(self._due)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def busy_besides(self, key: K) -> bool:
        """Whether work other than ``key`` runs now or is due (a retry or a delayed put not
        yet due is not work now). Cheap while others run: the first one found answers."""
        if any(running != key for running in self._running):
            return True
        now = self._clock.now()
        return any(due <= now and waiting != key for waiting, due in self._due.items())

    def put(self, key: K, *, delay_s: float = 0.0) -> None:
        """Ask for ``key`` to be processed after ``delay_s``; never blocks.

        Coalesces with a pending run of the same key, a pending backoff retry included: the
        earlier due time wins. Ignored (and counted as dropped) once ``drain`` has begun.
        """
        if math.isnan(delay_s):
            raise ValueError("delay_s is NaN")
        if self._draining:
            self._dropped.inc()
            logger.debug("queue %s is draining, dropped %r", self._name, key)
            return
        due = self._clock.now() + max(delay_s, 0.0)
        pending = self._due.get(key)
        if pending is None or due < pending:
            self._schedule(key, due)

    def set_limit(self, pool: str, limit: int) -> None:
        """Change a pool's limit, also while running: runs under way finish, new ones start only
        while fewer than ``limit`` of the pool run (anyio's ``CapacityLimiter.total_tokens``)."""
        if pool not in self._limits:
            raise KeyError(f"queue {self._name} has no pool {pool!r}")
        if limit < 1:
            raise ValueError(f"concurrency {pool} must be >= 1, got {limit}")
        self._limits[pool] = limit
        limiter = self._limiters.get(pool)
        if limiter is not None:
            limiter.total_tokens = limit

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start due keys until cancelled; cancelling it cancels every running ``process``."""
        if self._started:
            raise RuntimeError(f"work queue {self._name} is already running")
        self._started = True
        # Made here, inside the event loop that uses them.
        self._limiters = {pool: anyio.CapacityLimiter(n) for pool, n in self._limits.items()}
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    self._start_due(tg)
                    # The clock moved since _start_due read it: a key may be due already.
                    delay = max(self._heap[0][0] - self._clock.now(), 0.0) if self._heap else None
                    await self._wait_for_change(delay)
        finally:
            self._started = False

    async def drain(self, *, timeout_s: float) -> bool:
        """Refuse new puts and wait until nothing runs and nothing is due now.

        Keys scheduled for later (delayed puts, pending retries) do not hold the drain up.
        Returns False if ``timeout_s`` (on the queue's clock) passed first.
        """
        self._draining = True
        deadline = self._clock.now() + timeout_s
        while not self._is_idle():
            remaining = deadline - self._clock.now()
            if remaining <= 0 or not await self._wait_for_change(remaining):
                return self._is_idle()
        return True

    # --- internals -------------------------------------------------------------------------------

    def _schedule(self, key: K, due: float) -> None:
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._compact()
        self._depth_gauge.set(len(self._due))
        self._notify()

    def _compact(self) -> None:
        """Drop superseded heap entries, so repeated re-puts cannot grow the heap unbounded."""
        self._heap = [entry for entry in self._heap if self._due.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)

    def _start_due(self, tg: anyio.abc.TaskGroup) -> None:
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._due.get(key) != due or key in self._lanes:
                # Superseded, or its lane is busy and will pick it up when the current run ends.
                continue
            self._lanes.add(key)
            tg.start_soon(self._lane, key, name=f"{self._name} lane for {key!r}")

    def _limiter_of(self, key: K) -> anyio.CapacityLimiter:
        pool = self._pool_of(key) if self._pool_of is not None else None
        return self._limiters.get(pool or "") or self._limiters[""]

    async def _lane(self, key: K) -> None:
        limiter = self._limiter_of(key)
        try:
            while True:
                async with limiter:
                    due = self._due.pop(key)
                    self._depth_gauge.set(len(self._due))
                    self._wait_hist.observe(max(self._clock.now() - due, 0.0))
                    self._running.add(key)
                    try:
                        await self._process(key)
                    except Exception as e:
                        self._on_failure(key, e)
                    else:
                        self._failures.pop(key, None)
                        self._succeeded.inc()
                    finally:
                        self._running.discard(key)
                next_due = self._due.get(key)
                if next_due is None:
                    return
                if next_due > self._clock.now():
                    # Not due yet (a retry or a delayed put): the dispatcher starts a new lane.
                    self._seq += 1
                    heapq.heappush(self._heap, (next_due, self._seq, key))
                    return
        finally:
            self._lanes.discard(key)
            self._notify()

    def _on_failure(self, key: K, error: Exception) -> None:
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        self._failed.inc()
        self._retries.inc()
        delay = self._backoff.delay(failures, random=self._random)
        logger.warning(
            "%s: processing %r failed (%d in a row), retrying in %.3fs: %s",
            self._name,
            key,
            failures,
            delay,
            error,
        )
        due = self._clock.now() + delay
        pending = self._due.get(key)
        if pending is not None and pending <= due:
            return  # put again while it ran: that earlier run is the retry
        self._due[key] = due
        self._depth_gauge.set(len(self._due))

    def _is_idle(self) -> bool:
        if self._lanes:
            return False
        now = self._clock.now()
        return all(due > now for due in self._due.values())

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_for_change(self, timeout_s: float | None) -> bool:
        """Wait for any put or lane exit; False if ``timeout_s`` of clock time passed first."""
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        if timeout_s is None:
            await changed.wait()
            return True
        fired = False
        async with anyio.create_task_group() as tg:

            async def expire() -> None:
                await self._clock.sleep(timeout_s)
                tg.cancel_scope.cancel()

            tg.start_soon(expire)
            await changed.wait()
            fired = True
            tg.cancel_scope.cancel()
        return fired
