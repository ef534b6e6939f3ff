"""runtime.release_memory: the heap handed back after a reconcile, unless a measurement asks not."""

import ctypes
from typing import Any

import pytest

from aioreconcile import runtime


class _Libc:
    def __init__(self) -> None:
        self.trims: list[int] = []

    def malloc_trim(self, pad: int) -> int:
        self.trims.append(pad)
        return 1


@pytest.mark.parametrize(
    ("setting", "trims"),
    [
        pytest.param(None, [0], id="default-trims"),
        pytest.param("on", [0], id="on-trims"),
        pytest.param("off", [], id="off-leaves-the-heap-for-a-measurement"),
        pytest.param("OFF", [], id="off-in-any-case"),
    ],
)
def test_release_memory_trims_unless_switched_off(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, trims: list[int]
) -> None:
    libc = _Libc()

    def cdll(name: str, *_: Any, **__: Any) -> _Libc:
        assert name == "libc.so.6"
        return libc

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    if setting is None:
        monkeypatch.delenv("AIORECONCILE_MALLOC_TRIM", raising=False)
    else:
        monkeypatch.setenv("AIORECONCILE_MALLOC_TRIM", setting)

    runtime.release_memory()

    assert libc.trims == trims


class _Cycle:
    """A reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_run_s_release_freezes_what_survives_and_collects_the_frozen_heap_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc
    import weakref

    monkeypatch.setenv("AIORECONCILE_MALLOC_TRIM", "off")
    now = [1000.0]
    release = runtime.MemoryRelease(full_every_s=600.0, clock=lambda: now[0])
    try:
        release()  # the first release collects everything, then freezes the survivors
        survivor = _Cycle()
        gone = weakref.ref(survivor)
        now[0] += 1.0
        release()  # survivor is alive: frozen with the rest
        assert gc.get_freeze_count() > 0
        del survivor  # now garbage, a cycle among frozen objects

        now[0] += 10.0
        release()
        gc.collect()  # CPython's own collections do not walk the frozen heap either
        assert gone() is not None  # it waits for the next full collection

        young = _Cycle()  # made and dropped since the last release: not frozen
        young_gone = weakref.ref(young)
        del young
        now[0] += 1.0
        release()
        assert young_gone() is None  # what a reconcile leaves is collected by its own release
        assert gone() is not None

        now[0] += 600.0
        release()
        assert gone() is None  # collected, at most full_every_s later
    finally:
        gc.unfreeze()
