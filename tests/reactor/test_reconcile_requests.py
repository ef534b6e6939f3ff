"""A delivery's triggers handed on (CRD mode, every replica): in memory to the controller for a
sync this replica reconciles, else recorded on the Sync, and the answer waits for it. The
requester is a fake through the constructor; the real PATCH against the apiserver, and a standby
killed right after its 202, are in tests/e2e/test_webhook_handoff.py."""

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from aioreconcile.engine.errors import AioreconcileError, TransientError
from aioreconcile.engine.events import EventType, WatchEvent
from aioreconcile.engine.metrics import Registry
from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.triggers import Push, PushEvent
from aioreconcile.reactor.requesting import ReconcileRequests, SyncCatalog

A = "a" * 40
AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
REQUESTED_AT = "reconcile.aioreconcile.dev/requestedAt"
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Requester:
    def __init__(self, *, fail: set[str] | None = None, delay_s: float = 0.0) -> None:
        self.patches: list[tuple[str, str, JsonObject]] = []
        self.fail = fail or set()
        self.delay_s = delay_s
        self.gone: set[str] = set()

    async def request_reconcile(self, namespace: str, name: str, patch: JsonObject) -> bool:
        await anyio.sleep(self.delay_s)
        if name in self.fail:
            raise TransientError(f"PATCH {name}: connection reset")
        if name in self.gone:
            return False
        self.patches.append((namespace, name, patch))
        return True


def sync_event(name: str, kind: EventType = EventType.ADDED, **metadata: Any) -> WatchEvent:
    obj: JsonObject = {
        "apiVersion": "aioreconcile.dev/v1alpha1",
        "kind": "Sync",
        "metadata": {"name": name, "namespace": "team", **metadata},
        "spec": {"source": {"url": "git://example/x"}},
    }
    return WatchEvent(kind, ObjectRef.of(obj), obj)


def requests(
    requester: Requester, *, owned: frozenset[str] = frozenset(), timeout_s: float = 5.0
) -> tuple[ReconcileRequests, list[Push]]:
    catalog = SyncCatalog()
    for name in ("one", "two", "three"):
        catalog.on_event(sync_event(name))
    pushed: list[Push] = []
    handing = ReconcileRequests(
        catalog=catalog,
        requester=requester,
        owns=lambda sync: sync in owned,
        push=pushed.append,
        registry=Registry(),
        timeout_s=timeout_s,
        clock=lambda: AT,
    )
    return handing, pushed


async def test_a_sync_reconciled_here_is_pushed_in_memory_the_others_recorded_on_their_sync() -> (
    None
):
    requester = Requester()
    handing, pushed = requests(requester, owned=frozenset({"team.one"}))
    await handing.record([Push("team.one", A), Push("team.two", A)])
    assert pushed == [Push("team.one", A)]
    assert requester.patches == [
        (
            "team",
            "two",
            {
                "metadata": {
                    "annotations": {
                        REQUESTED_AT: "2026-12-01T09:00:00.000000+00:00",
                        "reconcile.aioreconcile.dev/revision": A,
                        "reconcile.aioreconcile.dev/traceparent": None,
                    }
                }
            },
        )
    ]


async def test_the_webhook_request_span_is_recorded_for_the_reconcile_to_link_to() -> None:
    requester = Requester()
    handing, _ = requests(requester)
    event = PushEvent(
        provider="github",
        delivery_id="d",
        repository_urls=("git://example/x",),
        ref="refs/heads/main",
        before="0" * 40,
        after=A,
        link_traceparent=TRACE,
    )
    await handing.record([Push("team.one", A, event=event)])
    (_, _, patch) = requester.patches[0]
    assert patch["metadata"]["annotations"]["reconcile.aioreconcile.dev/traceparent"] == TRACE


async def test_one_sync_not_recorded_fails_the_delivery() -> None:
    requester = Requester(fail={"two"})
    handing, _ = requests(requester)
    with pytest.raises(AioreconcileError, match="Sync team/two"):
        await handing.record([Push("team.one", A), Push("team.two", A), Push("team.three", A)])
    assert sorted(name for _, name, _ in requester.patches) == ["one", "three"]


async def test_an_apiserver_slower_than_the_deadline_fails_the_delivery_in_time() -> None:
    handing, _ = requests(Requester(delay_s=10), timeout_s=0.2)
    began = anyio.current_time()
    with pytest.raises(AioreconcileError, match=r"not recorded within 0\.2 s"):
        await handing.record([Push("team.one", A)])
    assert anyio.current_time() - began < 1.0


async def test_a_sync_deleted_meanwhile_is_no_failure() -> None:
    requester = Requester()
    requester.gone.add("one")
    handing, _ = requests(requester)
    await handing.record([Push("team.one", A), Push("team.unknown", A)])
    assert requester.patches == []


def test_the_catalog_matches_only_syncs_that_exist_parse_and_are_not_being_deleted() -> None:
    catalog = SyncCatalog()
    catalog.on_event(sync_event("kept"))
    catalog.on_event(sync_event("bad"))
    bad = sync_event("bad", EventType.MODIFIED)
    bad.object["spec"]["source"]["ref"] = "main\u2028x"  # the parser refuses it
    catalog.on_event(bad)
    catalog.on_event(sync_event("going"))
    catalog.on_event(sync_event("going", deletionTimestamp="2026-12-01T00:00:00Z"))
    catalog.on_event(sync_event("gone"))
    catalog.on_event(sync_event("gone", EventType.DELETED))
    assert [spec.name for spec in catalog.specs()] == ["team.kept"]
    assert catalog.key("team.kept") == ("team", "kept")
    assert catalog.key("team.bad") is None
