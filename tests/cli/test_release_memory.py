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
