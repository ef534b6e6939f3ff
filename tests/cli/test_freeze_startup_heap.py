"""``aioreconcile run`` takes its start-up heap out of later collections (``gc.freeze``): the
full ``gc.collect()`` after every reconcile no longer walks the modules and the tracing SDK."""

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aioreconcile import cli, runtime


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session is collected as before


def test_the_startup_heap_is_frozen_and_its_garbage_collected_first(unfrozen: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    garbage, alive = Node(), Node()
    collected = weakref.ref(garbage)
    del garbage
    runtime.freeze_startup_heap()
    assert collected() is None  # start-up's garbage is freed, not frozen
    assert gc.get_freeze_count() > 0
    assert not any(o is alive for o in gc.get_objects())  # frozen: no generation holds it
    gc.unfreeze()
    assert any(o is alive for o in gc.get_objects())


def test_run_freezes_the_startup_heap_and_a_library_caller_does_not_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Any] = []

    async def fake_run_controller(settings: runtime.RunSettings, **_: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(runtime, "run_controller", fake_run_controller)
    config = tmp_path / "c.yaml"
    config.write_text("syncs: []\n")
    assert cli.main(["run", "--config", str(config)]) == 0
    assert [s.freeze_startup_heap for s in seen] == [True]
    assert runtime.RunSettings(config=config).freeze_startup_heap is False
