"""The first-build display: what is built, how long it took before, that it is cached after."""

import io
from pathlib import Path

import pytest
from rich.console import Console

from aioreconcile.demo import building


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AIORECONCILE_TESTENV_CACHE", str(tmp_path))
    return tmp_path


def test_before_any_build_the_documented_cold_time_is_shown(cache: Path) -> None:
    assert building.expectation("kube-apiserver", building.recorded_times()) == (
        "first build; about 445 s on 2 cores (docs/testenv.md)"
    )


def test_the_builders_lines_become_rows_and_the_time_is_recorded(cache: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)

    with building.BuildProgress(console, ["etcd"]) as progress:
        progress.line(
            "[testenv] etcd: building (first time on this machine; this takes minutes)..."
        )
        progress.line("[testenv] etcd: built in 47 s -> /cache/etcd-v3.6.16/bin/etcd")

    text = out.getvalue()
    assert "Building the real cluster binaries from Go modules: etcd" in text
    assert "cached afterwards" in text
    assert "built etcd in 47 s (cached now)" in text
    assert building.recorded_times() == {"etcd": 47.0}
    assert building.expectation("etcd", building.recorded_times()) == "took 47 s last time here"


def test_a_builder_error_is_shown_as_it_came(cache: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)

    with building.BuildProgress(console, ["etcd"]) as progress:
        progress.line("[testenv] error: no Go toolchain on PATH: install Go >= 1.26")

    assert "[testenv] error: no Go toolchain on PATH" in out.getvalue()
