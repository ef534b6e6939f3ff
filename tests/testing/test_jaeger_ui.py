"""The test Jaeger serves a jaeger-ui build when given one (``ui_assets`` or
``AIORECONCILE_JAEGER_UI_ASSETS``), and refuses a directory that is not one."""

import urllib.request
from pathlib import Path

import anyio
import pytest

from aioreconcile.testing.jaeger import UI_ASSETS_ENV, UIAssetsError, start_jaeger

MARKER = "aioreconcile-ui-assets-marker"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@pytest.mark.jaeger
async def test_the_query_port_serves_the_index_html_of_the_assets_dir_named_by_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = tmp_path / "ui"
    assets.mkdir()
    (assets / "index.html").write_text(
        f'<!doctype html><html><head><base href="/" /></head><body>{MARKER}</body></html>'
    )
    monkeypatch.setenv(UI_ASSETS_ENV, str(assets))

    async with start_jaeger() as jaeger:
        page = await anyio.to_thread.run_sync(_get, f"{jaeger.query_url}/")
        # A client-side route of the single-page app gets the same index.html.
        routed = await anyio.to_thread.run_sync(_get, f"{jaeger.query_url}/search")

    assert MARKER in page
    assert MARKER in routed
    assert "not the Jaeger UI you are looking for" not in page


@pytest.mark.jaeger
async def test_without_assets_the_query_port_shows_jaegers_placeholder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(UI_ASSETS_ENV, raising=False)

    async with start_jaeger() as jaeger:
        page = await anyio.to_thread.run_sync(_get, f"{jaeger.query_url}/")

    assert "not the Jaeger UI you are looking for" in page


async def test_an_assets_dir_without_index_html_is_refused_before_jaeger_starts(
    tmp_path: Path,
) -> None:
    with pytest.raises(UIAssetsError, match=r"has no index.html.*AIORECONCILE_JAEGER_UI_ASSETS"):
        async with start_jaeger(ui_assets=tmp_path):
            pass
