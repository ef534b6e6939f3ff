"""Watches of the kinds we manage, in three tiers, each small enough to test on its own.

1. ``stream_events``: one HTTP watch request, newline-delimited JSON in, ``RawEvent`` out.
2. ``KindWatch``: list-then-watch of one resource, cluster-wide, filtered by our ownership label;
   it resumes from the last resourceVersion after a disconnect and relists (emitting synthetic
   events for what it missed) after 410 Gone.
3. ``WatchManager``: one ``KindWatch`` per managed kind, started and stopped as that set changes.

A watch is known alive only while bytes arrive. With ``allowWatchBookmarks`` the apiserver's
watch cache offers every watcher a BOOKMARK once a minute (``defaultBookmarkFrequency`` in
k8s.io/apiserver ``pkg/storage/cacher``), sent only when the cache's resourceVersion has moved
past the watcher's: a kind that nobody changes can stay silent for minutes on a healthy
connection. A watch silent for ``WATCH_READ_TIMEOUT_S`` (90 s) is therefore restarted from its
last resourceVersion: a half-open connection is replaced within that bound, and a merely quiet
kind costs one cheap request every 90 s (no relist: its resourceVersion is still current).
client-go gets the same bound from HTTP/2 pings (``ReadIdleTimeout``); over HTTP/1.1 the read
timeout is ours. Each request also asks the server to end it after a random 5-10 minutes
(``timeoutSeconds``), as client-go's reflector does, so watches restart spread out in time.

The cache keeps ``ref -> resourceVersion`` only: drift detection needs to know *that* an object
changed, and the event carries the body. Memory stays flat however large the objects are.
Objects are never logged: they may be Secrets.
"""

import contextvars
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

import aiohttp
import anyio
import anyio.abc
import orjson

from aioreconcile.adapters.kube.discovery import Discovery, Resource
from aioreconcile.adapters.kube.transport import KubeTransport, ReadTimedOut
from aioreconcile.engine.errors import (
    ApiError,
    ConflictError,
    NotFoundError,
    TransientError,
)
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.model import JsonObject, ManifestError, ObjectRef
from aioreconcile.engine.naming import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from aioreconcile.engine.relisting import diff_listing, synthetic_events

logger = logging.getLogger(__name__)

MANAGED_SELECTOR: Final = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
BOOKMARK: Final = "BOOKMARK"
ERROR: Final = "ERROR"
LIST_PAGE_SIZE: Final = 500
BOOKMARK_PERIOD_S: Final = 60.0  # how often the apiserver's watch cache sends a BOOKMARK
WATCH_READ_TIMEOUT_S: Final = BOOKMARK_PERIOD_S * 1.5  # silent this long: half-open, restart
# The shortest read timeout `run` accepts. aiohttp reuses an idle pooled connection for 15 s
# (TCPConnector keepalive_timeout): a watch restarted sooner after its path went dead is
# handed one of those dead connections and waits another read timeout on it, once per such
# connection (measured with 5 s: healed after 13 s, three timeouts; tests/faults).
MIN_WATCH_READ_TIMEOUT_S: Final = 20.0
MIN_WATCH_TIMEOUT_S: Final = 300  # timeoutSeconds is random in [min, 2 * min), as client-go's
_READ_CHUNK: Final = 1 << 20
_EVENT_TYPES: Final = frozenset(t.value for t in EventType)


class ResourceVersionExpired(ApiError):
    """410 Gone: the server no longer keeps history back to the requested resourceVersion.
    Resuming is impossible; the only way on is a fresh LIST."""


class RawEvent(NamedTuple):
    """One line of a watch stream: ADDED, MODIFIED, DELETED or BOOKMARK and its object."""

    type: str
    object: JsonObject


class ChunkReader(Protocol):
    """What we read a watch body from (an ``aiohttp.StreamReader``); a seam for tests."""

    async def readany(self) -> bytes: ...


EventCallback = Callable[[WatchEvent], None]


# --- tier 1: one watch request -------------------------------------------------------------------


async def iter_lines(reader: ChunkReader) -> AsyncIterator[bytes]:
    """Non-empty lines of ``reader``, however the chunks split them.

    aiohttp's own ``readline`` refuses lines over its buffer limit (128 KiB), and one event is a
    whole object (a ConfigMap may hold 1 MiB), so we keep our own buffer. A last line without a
    newline is yielded as is: the caller decides whether it is complete JSON.
    """
    buffer = bytearray()
    while chunk := await reader.readany():
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            if end > start:
                yield bytes(buffer[start:end])
            start = end + 1
        del buffer[:start]
    if buffer.strip():
        yield bytes(buffer)


def _status_error(status: JsonObject) -> ApiError:
    """The error an ERROR event's Status stands for, as the transport would have raised it."""
    code = status.get("code")
    code = code if isinstance(code, int) else 500
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    kind = {
        410: ResourceVersionExpired,
        404: NotFoundError,
        409: ConflictError,
    }.get(code, ApiError)
    return kind(status=code, reason=reason, message=message)


def _decode(line: bytes, path: str) -> RawEvent:
    try:
        decoded = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        # The server writes whole lines; a broken one means the connection was cut mid-event.
        raise TransientError(f"watch {path}: truncated event ({len(line)} bytes)") from e
    if not isinstance(decoded, dict) or not isinstance(decoded.get("object"), dict):
        raise TransientError(f"watch {path}: malformed event")
    return RawEvent(str(decoded.get("type")), decoded["object"])


async def stream_events(
    transport: KubeTransport,
    resource: Resource,
    *,
    label_selector: str,
    resource_version: str,
    timeout_s: int = MIN_WATCH_TIMEOUT_S,
    read_timeout_s: float | None = WATCH_READ_TIMEOUT_S,
    namespace: str = "",
) -> AsyncGenerator[RawEvent, None]:
    """Events of one watch request across all namespaces (or ``namespace``), until the server
    ends it.

    Raises ``ResourceVersionExpired`` when ``resource_version`` is too old (410, as an ERROR
    event or as the response status), another ``ApiError`` for other ERROR events,
    ``ReadTimedOut`` when nothing (not even a bookmark) arrived for ``read_timeout_s``, and
    ``TransientError`` when the connection drops; a normal end (``timeoutSeconds``) just stops.
    """
    path = resource.collection_path(namespace)
    params = {
        "watch": "1",
        "allowWatchBookmarks": "true",
        "resourceVersion": resource_version,
        "timeoutSeconds": str(timeout_s),
    }
    if label_selector:
        params["labelSelector"] = label_selector
    try:
        async with transport.stream(path, params=params, read_timeout_s=read_timeout_s) as content:
            async for line in iter_lines(content):
                event = _decode(line, path)
                if event.type == ERROR:
                    raise _status_error(event.object)
                yield event
    except ResourceVersionExpired:
        raise
    except ApiError as e:
        if e.status == 410:
            raise ResourceVersionExpired(status=410, reason=e.reason, message=e.message) from e
        raise
    except (aiohttp.ClientPayloadError, OSError) as e:
        # The transport maps connection errors only; these also mean the body was cut short.
        raise TransientError(f"watch {path}: {type(e).__name__}: {e}") from e


# --- tier 2: list-then-watch of one kind ---------------------------------------------------------


@dataclass
class WatchStats:
    """Counters for tests and, later, metrics; shared by every watch of one manager."""

    events_seen: int = 0  # delivered to on_event, synthetic ones included
    synthetic: int = 0
    bookmarks: int = 0
    lists: int = 0  # every LIST, the first one included
    relists: int = 0  # LISTs after a 410
    reconnects: int = 0  # watch requests after the first of a run
    failures: int = 0  # watches or lists that ended in an error
    silent_restarts: int = 0  # watches restarted because nothing arrived within the read timeout


def _persistent(error: Exception) -> bool:
    """Worth a warning: retrying will not help by itself (forbidden, kind gone, bad selector)."""
    return isinstance(error, ApiError) and not error.transient


class Backoff:
    """Jittered exponential delays: many watches failing together do not retry in lockstep."""

    def __init__(self, first: float = 0.05, *, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._next = self.first


class KindWatch:
    """List-then-watch of one resource across all namespaces, keeping ``ref -> resourceVersion``.

    The first LIST emits nothing unless ``emit_initial``: the controller has just applied those
    objects and knows them. After that every change reaches ``on_event`` in the server's order;
    ``on_event`` is synchronous and must not block, so a slow consumer cannot stall the stream.

    ``timeout_s`` is the server-side length of each watch request (None: random 5-10 min);
    ``read_timeout_s`` the longest silence taken for a live connection (None: no bound).
    """

    def __init__(
        self,
        transport: KubeTransport,
        resource: Resource,
        *,
        on_event: EventCallback,
        label_selector: str = MANAGED_SELECTOR,
        emit_initial: bool = False,
        timeout_s: int | None = None,
        read_timeout_s: float | None = WATCH_READ_TIMEOUT_S,
        page_size: int = LIST_PAGE_SIZE,
        stats: WatchStats | None = None,
        namespace: str = "",
    ) -> None:
        self.transport = transport
        self.resource = resource
        self.namespace = namespace  # "" for all namespaces
        self.on_event = on_event
        self.label_selector = label_selector
        self.emit_initial = emit_initial
        self.timeout_s = timeout_s
        self.read_timeout_s = read_timeout_s
        self.page_size = page_size
        self.stats = stats if stats is not None else WatchStats()
        self.cache: dict[ObjectRef, str] = {}
        self.resource_version = ""
        self.synced = anyio.Event()
        self._backoff = Backoff()
        self._received = 0

    def __repr__(self) -> str:
        return f"KindWatch({self._name}, rv={self.resource_version!r}, {len(self.cache)} cached)"

    @property
    def _name(self) -> str:
        return f"{self.resource.kind}.{self.resource.api_version}"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """List (the first time) and watch until cancelled; a second ``run`` resumes where the
        first stopped, relisting if the server has forgotten that point."""
        task_status.started()
        if not self.synced.is_set():
            await self._list_until_done(initial=True)
        first = True
        while True:
            if not first:
                self.stats.reconnects += 1
            first = False
            logger.debug("watching %s from rv %s", self._name, self.resource_version)
            began = time.monotonic()
            self._received = 0
            timeout_s = self._request_timeout()
            try:
                await self._watch_once(timeout_s)
            except ResourceVersionExpired:
                logger.info("%s: rv %s expired (410), relisting", self._name, self.resource_version)
                await self._list_until_done(initial=False)
                self._backoff.reset()
                continue
            except ReadTimedOut as e:
                # Half-open, or only quiet: either way a new request from where we are is right.
                # Waiting the read timeout was the delay; no backoff on top.
                # The idle pooled connections went silent with it, most likely: not one of
                # them may carry the new watch (or a heal) into a second timeout.
                self.stats.silent_restarts += 1
                dropped = self.transport.drop_idle_connections()
                logger.debug(
                    "%s: watch from rv %s silent (%s), restarting it (%d idle connections dropped)",
                    self._name,
                    self.resource_version,
                    e,
                    dropped,
                )
                continue
            except (TransientError, ApiError) as e:
                self.stats.failures += 1
                if self._received:  # it worked for a while: this is a new failure, not a streak
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                log = logger.warning if _persistent(e) else logger.info
                log(
                    "%s: watch from rv %s failed (%s), reconnecting in %.2fs",
                    self._name,
                    self.resource_version,
                    e,
                    delay,
                )
                await anyio.sleep(delay)
                continue
            # The server ended the watch (timeoutSeconds). One that ended at once with nothing
            # said is treated as a failure, so a misbehaving server cannot make us spin.
            if self._received or time.monotonic() - began >= min(1.0, timeout_s / 2):
                self._backoff.reset()
            else:
                await anyio.sleep(self._backoff.next_delay())

    def _request_timeout(self) -> int:
        if self.timeout_s is not None:
            return self.timeout_s
        return random.randrange(MIN_WATCH_TIMEOUT_S, 2 * MIN_WATCH_TIMEOUT_S)

    async def _watch_once(self, timeout_s: int) -> None:
        """One watch request, counting what it brought (bookmarks included) in ``_received``."""
        stream = stream_events(
            self.transport,
            self.resource,
            label_selector=self.label_selector,
            resource_version=self.resource_version,
            timeout_s=timeout_s,
            read_timeout_s=self.read_timeout_s,
            namespace=self.namespace,
        )
        async with aclosing(stream) as events:
            async for event in events:
                self._received += 1
                self._handle(event)

    def _handle(self, event: RawEvent) -> None:
        metadata = event.object.get("metadata") or {}
        rv = str(metadata.get("resourceVersion") or "")
        if event.type == BOOKMARK:
            self.stats.bookmarks += 1
            if rv:
                self.resource_version = rv
            return
        if event.type not in _EVENT_TYPES:
            logger.warning("%s: ignoring a watch event of type %r", self._name, event.type)
            return
        try:
            ref = ObjectRef.of(event.object)
        except ManifestError as e:
            logger.warning("%s: ignoring an event without identity: %s", self._name, e)
            return
        if event.type == EventType.DELETED:
            self.cache.pop(ref, None)
        else:
            self.cache[ref] = rv
        if rv:
            self.resource_version = rv
        self._emit(WatchEvent(EventType(event.type), ref, event.object))

    def _emit(self, event: WatchEvent) -> None:
        self.stats.events_seen += 1
        self.stats.synthetic += event.synthetic
        self.on_event(event)

    async def _list_until_done(self, *, initial: bool) -> None:
        """LIST (and diff) until it works: an apiserver that is down is waited for, not fatal."""
        while True:
            try:
                await (self.sync() if initial else self.relist())
            except (TransientError, ApiError) as e:
                self.stats.failures += 1
                delay = self._backoff.next_delay()
                log = logger.warning if _persistent(e) else logger.info
                log("%s: list failed (%s), retrying in %.2fs", self._name, e, delay)
                await anyio.sleep(delay)
            else:
                return

    async def sync(self) -> None:
        """The first LIST: fill the cache (and emit ADDED only if ``emit_initial``)."""
        if self.emit_initial:
            await self._list_and_diff("initial list")
        else:
            self.cache, _, count = await self._list(unchanged=lambda _ref, _rv: True)
            logger.info("%s: listed %d objects at rv %s", self._name, count, self.resource_version)
        self.synced.set()

    async def relist(self) -> None:
        """LIST again and emit synthetic events for every difference from the cache.

        Called after 410 Gone; public so tests can exercise the diff against a real server.
        """
        self.stats.relists += 1
        await self._list_and_diff("relist")

    async def _list_and_diff(self, what: str) -> None:
        cached = self.cache
        listed, bodies, count = await self._list(unchanged=lambda ref, rv: cached.get(ref) == rv)
        diff = diff_listing(cached, listed)
        logger.info(
            "%s: %s of %d objects at rv %s: %d added, %d modified, %d deleted",
            self._name,
            what,
            count,
            self.resource_version,
            len(diff.added),
            len(diff.modified),
            len(diff.deleted),
        )
        self.cache = listed
        for event in synthetic_events(diff, bodies):
            self._emit(event)

    async def _list(
        self, *, unchanged: Callable[[ObjectRef, str], bool]
    ) -> tuple[dict[ObjectRef, str], dict[ObjectRef, JsonObject], int]:
        """All labelled objects, page by page, as ``ref -> rv`` and the bodies worth keeping.

        Bodies of ``unchanged`` objects are dropped page by page, so a relist of many large
        objects holds only what it will emit. Sets ``resource_version`` to the listing's own.
        """
        path = self.resource.collection_path(self.namespace)
        versions: dict[ObjectRef, str] = {}
        bodies: dict[ObjectRef, JsonObject] = {}
        list_rv = ""
        token = ""
        self.stats.lists += 1
        while True:
            params = {"limit": str(self.page_size)}
            if self.label_selector:
                params["labelSelector"] = self.label_selector
            if token:
                params["continue"] = token
            try:
                page = (await self.transport.request("GET", path, params=params)).body
            except ApiError as e:
                if e.status == 410 and token:  # the continue token expired: start over
                    versions, bodies, list_rv, token = {}, {}, "", ""
                    continue
                raise
            metadata = page.get("metadata") or {}
            list_rv = list_rv or str(metadata.get("resourceVersion") or "")
            for item in page.get("items") or []:
                # List items come without apiVersion and kind; events and refs need them.
                item.setdefault("apiVersion", self.resource.api_version)
                item.setdefault("kind", self.resource.kind)
                ref = ObjectRef.of(item)
                rv = str((item.get("metadata") or {}).get("resourceVersion") or "")
                versions[ref] = rv
                if not unchanged(ref, rv):
                    bodies[ref] = item
            token = str(metadata.get("continue") or "")
            if not token:
                break
        self.resource_version = list_rv
        return versions, bodies, len(versions)


# --- tier 3: the set of watched kinds ------------------------------------------------------------


def _kind_key(resource: Resource) -> tuple[str, str]:
    return resource.group, resource.kind


async def _first_of(*events: anyio.Event) -> None:
    """Return once any of ``events`` is set."""
    async with anyio.create_task_group() as task_group:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            task_group.cancel_scope.cancel()

        for event in events:
            task_group.start_soon(wait, event)


class WatchManager:
    """One ``KindWatch`` per managed kind, in one task group owned by ``run``.

    ``watch_kinds`` declares the whole set (idempotent, callable before or while running):
    watches start for new kinds and are cancelled for kinds no longer named. A kind named in a
    different version restarts its watch in that version. Events of every kind go to the one
    ``on_event``, which must not raise: an exception there is a bug and stops every watch.

    Watches run in the context (contextvars) of ``run``, whoever asked for them: a task copies
    the context of the code that starts it, and ``watch_kinds`` is called from inside a
    reconcile, whose trace context would otherwise be kept by the watch for its whole life and
    stamped on every log line of every later event.
    """

    def __init__(
        self,
        transport: KubeTransport,
        discovery: Discovery,
        *,
        on_event: EventCallback,
        label_selector: str = MANAGED_SELECTOR,
        emit_initial: bool = False,
        timeout_s: int | None = None,
        read_timeout_s: float | None = WATCH_READ_TIMEOUT_S,
    ) -> None:
        self.transport = transport
        self.discovery = discovery
        self.on_event = on_event
        self.label_selector = label_selector
        self.emit_initial = emit_initial
        self.timeout_s = timeout_s
        self.read_timeout_s = read_timeout_s
        self.stats = WatchStats()
        self._watches: dict[tuple[str, str], KindWatch] = {}
        self._scopes: dict[tuple[str, str], anyio.CancelScope] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._context: contextvars.Context | None = None  # run's, for every watch task
        self._changed = anyio.Event()

    @property
    def kinds(self) -> frozenset[Resource]:
        """The resources being watched (or to be watched once ``run`` starts)."""
        return frozenset(w.resource for w in self._watches.values())

    def watch(self, resource: Resource) -> KindWatch:
        """The watch of ``resource``'s kind; KeyError when that kind is not watched."""
        return self._watches[_kind_key(resource)]

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the watches until cancelled."""
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                self._context = contextvars.copy_context()
                for key in self._watches:
                    self._start(key)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._task_group = None
            self._context = None
            self._scopes.clear()

    def watch_kinds(self, kinds: Iterable[Resource]) -> None:
        """Make the watched set exactly ``kinds``."""
        wanted = {_kind_key(r): r for r in kinds}
        for key, existing in list(self._watches.items()):
            if wanted.get(key) != existing.resource:
                logger.info("stopping the watch of %s", existing.resource.kind)
                del self._watches[key]
                scope = self._scopes.pop(key, None)
                if scope is not None:
                    scope.cancel()
        for key, resource in wanted.items():
            if key in self._watches:
                continue
            self._watches[key] = KindWatch(
                self.transport,
                resource,
                on_event=self.on_event,
                label_selector=self.label_selector,
                emit_initial=self.emit_initial,
                timeout_s=self.timeout_s,
                read_timeout_s=self.read_timeout_s,
                stats=self.stats,
            )
            if self._task_group is not None:
                self._start(key)
        self._changed.set()
        self._changed = anyio.Event()

    async def watch_refs(self, refs: Iterable[ObjectRef]) -> None:
        """``watch_kinds`` for the kinds of ``refs`` (an inventory), resolved via discovery."""
        kinds: dict[tuple[str, str], Resource] = {}
        for ref in refs:
            if (ref.group, ref.kind) not in kinds:
                resource = await self.discovery.resolve(ref)
                kinds[_kind_key(resource)] = resource
        self.watch_kinds(kinds.values())

    async def wait_synced(self, kind: Resource | None = None) -> None:
        """Return once the first LIST of ``kind`` (or of every watched kind) is done.

        Objects changed after this are certain to be reported; before it, they may be taken as
        part of the initial state. A kind added while waiting is waited for too.
        """
        if kind is not None:
            await self.watch(kind).synced.wait()
            return
        while pending := [w for w in self._watches.values() if not w.synced.is_set()]:
            # Also wake when the set changes: a removed kind will never sync.
            await _first_of(pending[0].synced, self._changed)

    def _start(self, key: tuple[str, str]) -> None:
        task_group, context = self._task_group, self._context
        assert task_group is not None
        assert context is not None
        watch = self._watches[key]
        scope = anyio.CancelScope()
        self._scopes[key] = scope
        # The new task copies the context current at start_soon: make that run's, not ours.
        context.copy().run(
            lambda: task_group.start_soon(self._run_watch, watch, scope, name=f"watch {key}")
        )

    async def _run_watch(self, watch: KindWatch, scope: anyio.CancelScope) -> None:
        with scope:
            logger.info("starting the watch of %s", watch.resource.kind)
            await watch.run()
