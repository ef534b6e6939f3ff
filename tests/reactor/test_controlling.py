"""The controller's reactions to watch events, with fakes passed through its constructor
(async tests: the queue reads the event loop's clock)."""

import copy
import logging
from typing import Any, cast

import pytest

from aioreconcile.engine.config import GitSourceSpec, SyncSpec
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import ObjectRef
from aioreconcile.engine.outcomes import Reason
from aioreconcile.engine.planning import as_stored, our_fields, stamp
from aioreconcile.engine.triggers import Push
from aioreconcile.reactor.controlling import Controller, _compact
from tests.reactor.fakes import FakeGitSource, NoWatcher

DESIRED = stamp(
    {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "n"},
        "data": {"k": "git"},
    },
    sync="app",
    revision="a" * 40,
    traceparent=None,
)
REF = ObjectRef.of(DESIRED)
OURS = {
    "manager": "aioreconcile",
    "operation": "Apply",
    "apiVersion": "v1",
    "time": "2026-11-28T00:00:00Z",
    "fieldsType": "FieldsV1",
    "fieldsV1": {
        "f:data": {"f:k": {}},
        "f:metadata": {
            "f:labels": {"f:app.kubernetes.io/managed-by": {}, "f:aioreconcile.dev/sync": {}},
            "f:annotations": {"f:aioreconcile.dev/revision": {}},
        },
    },
}


def controller(*, self_heal: bool = True) -> Controller:
    spec = SyncSpec(name="app", source=GitSourceSpec(url="git://example/x"), self_heal=self_heal)
    made = Controller(
        [spec],
        cluster=cast(Any, None),  # never reached: these tests only judge events
        render=cast(Any, None),
        sources={},
        inventories={},
        watcher=NoWatcher(),
        registry=Registry(),
    )
    state = made.states["app"]
    state.revision = "a" * 40
    state.desired = {REF: _compact(DESIRED)}
    stored = live("git", "10")
    fields = our_fields(stored)
    assert fields is not None
    state.stored = {REF: _compact(as_stored(stored, fields))}
    state.written = {REF: "10"}
    made._index("app", {}, state.desired)
    return made


def live(value: str, rv: str) -> dict[str, Any]:
    obj = copy.deepcopy(DESIRED)
    obj["data"]["k"] = value
    obj["metadata"]["resourceVersion"] = rv
    obj["metadata"]["managedFields"] = [OURS]
    return obj


async def test_foreign_edit_of_a_declared_field_queues_one_heal() -> None:
    made = controller()

    made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, live("edited", "11")))
    made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, live("again", "12")))

    assert made.queue.depth == 1  # coalesced


async def test_our_own_write_and_a_change_of_undeclared_fields_queue_nothing() -> None:
    made = controller()
    annotated = live("git", "11")
    annotated["metadata"]["annotations"]["someone.else/note"] = "hello"
    annotated["status"] = {"phase": "whatever"}

    made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, live("git", "10")))
    made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, annotated))

    assert made.queue.depth == 0


@pytest.mark.parametrize("label", ["aioreconcile.dev/sync", "app.kubernetes.io/managed-by"])
async def test_an_object_stripped_of_our_label_is_still_ours_and_healed(label: str) -> None:
    made = controller()
    stripped = live("git", "11")
    del stripped["metadata"]["labels"][label]

    made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, stripped))

    assert made.queue.depth == 1


async def test_an_object_of_no_sync_is_not_judged() -> None:
    made = controller()
    stranger = live("edited", "11")
    stranger["metadata"]["name"] = "someone-elses"
    del stranger["metadata"]["labels"]["aioreconcile.dev/sync"]

    made.on_watch_event(WatchEvent(EventType.MODIFIED, ObjectRef.of(stranger), stranger))

    assert made.queue.depth == 0


async def test_self_heal_false_counts_the_drift_and_queues_nothing() -> None:
    made = controller(self_heal=False)

    made.on_watch_event(WatchEvent(EventType.DELETED, REF, live("git", "11")))

    assert made.queue.depth == 0
    assert made.states["app"].drifts_reported == 1


async def test_a_bad_event_is_logged_and_never_stops_the_watches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made = controller()
    made.states["app"].desired = {REF: b"not json"}

    with caplog.at_level(logging.ERROR):
        made.on_watch_event(WatchEvent(EventType.MODIFIED, REF, live("edited", "11")))

    assert "could not judge a watch event" in caplog.text


def test_the_status_view_shows_no_token_of_the_source_url() -> None:
    from aioreconcile.reactor.controlling import SyncState

    token = "ghp_st4tus-t0ken"
    spec = SyncSpec(
        "app", GitSourceSpec(url=f"https://x-access-token:{token}@github.com/acme/app.git")
    )
    state = SyncState(spec, last_error=f"fetch https://x-access-token:{token}@github.com failed")

    view = state.view()

    assert view["url"] == "https://github.com/acme/app.git"
    assert token not in repr(view)


def test_the_status_view_escapes_control_characters_in_the_ref() -> None:
    from aioreconcile.reactor.controlling import SyncState

    spec = SyncSpec("app", GitSourceSpec(url="https://h/r.git", ref="ma\u202ein\u2028x"))

    assert SyncState(spec).view()["ref"] == "ma\\u202ein\\u2028x"


# --- a push is a hint ---------------------------------------------------------------------------

OLD, APPLIED, HEAD = "1" * 40, "2" * 40, "3" * 40


def hinted(source: FakeGitSource, *, applied: str) -> tuple[Controller, Registry]:
    registry = Registry()
    made = Controller(
        [SyncSpec(name="app", source=GitSourceSpec(url="git://example/x"))],
        cluster=cast(Any, None),  # never reached: the fake refuses every commit
        render=cast(Any, None),
        sources={"app": source},
        inventories={},
        watcher=NoWatcher(),
        registry=registry,
    )
    state = made.states["app"]
    state.last_applied_revision, state.reason = applied, Reason.SUCCEEDED
    return made, registry


def sample(registry: Registry, name: str, **labels: str) -> float:
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in registry.exposition().splitlines():
        if line.startswith(f"{name}{wanted} "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(("replayed", "verdict"), [(OLD, "not-head"), (APPLIED, "head")])
async def test_a_replayed_push_whose_head_is_applied_changes_nothing(
    replayed: str, verdict: str
) -> None:
    source = FakeGitSource(APPLIED, history=[(OLD, APPLIED)])
    made, registry = hinted(source, applied=APPLIED)

    made.push(Push("app", replayed))
    await made._reconcile("app")

    state = made.states["app"]
    assert source.fetches == 1  # looked at the ref
    assert (state.last_applied_revision, state.reconciles) == (APPLIED, 0)
    assert state.last_attempted_revision is None
    assert sample(registry, "aioreconcile_push_hints_total", sync="app", hint=verdict) == 1


async def test_the_head_is_attempted_whatever_the_push_named() -> None:
    source = FakeGitSource(HEAD, history=[(APPLIED, HEAD)])
    made, registry = hinted(source, applied=APPLIED)

    made.push(Push("app", OLD))
    await made._reconcile("app")

    assert made.states["app"].last_attempted_revision == HEAD
    assert sample(registry, "aioreconcile_ref_rewinds_total", sync="app") == 0


async def test_a_rewind_is_counted_once_however_often_it_is_retried() -> None:
    source = FakeGitSource(OLD, history=[(OLD, APPLIED)])  # the branch went back to OLD
    made, registry = hinted(source, applied=APPLIED)

    made.push(Push("app", OLD))
    await made._reconcile("app")
    made.poll("app")
    await made._reconcile("app")

    assert made.states["app"].last_attempted_revision == OLD
    assert sample(registry, "aioreconcile_ref_rewinds_total", sync="app") == 1
