"""A sync whose ``path`` is not in the commit: one clear error naming the path, the repository
(as it may be shown) and the commit; reported once per commit, not on every push or poll."""

import logging
import re
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from aioreconcile.engine.redaction import redact_url
from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.test_controller import Running, config_map, controller, manifests, secret_env
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration

__all__ = ["secret_env"]


async def processed(running: Running) -> float:
    """Work items the controller's queue has finished (``aioreconcile_queue_processed_total``)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{running.ops_port}/metrics") as response,
    ):
        text = await response.text()
    return sum(
        float(m[1])
        for m in re.finditer(r"^aioreconcile_queue_processed_total\S* (\S+)$", text, re.M)
    )


async def test_missing_path_is_named_with_repository_and_commit_once(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = upstream("nopath")
    files = manifests(config_map("settings", namespace, v="1"))
    sha = repo.commit({name.replace("deploy/", "elsewhere/"): text for name, text in files.items()})
    caplog.set_level(logging.WARNING, logger="aioreconcile.reactor.controlling")
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:

        async def failed() -> bool:
            return bool((await running.sync_state())["reason"] == "RenderFailed")

        await running.wait_for(failed)
        state = await running.sync_state()
        before = await processed(running)
        # The same commit again, as a redelivered push.
        response = await running.push_webhook(sha)
        assert response.status == 202

        async def handled() -> bool:
            return await processed(running) > before

        await running.wait_for(handled)
        again = await running.sync_state()

    expected = f"path `deploy` not found in {redact_url(running.url)} at {sha[:7]}"
    assert state["lastError"] == expected
    assert "trees/" not in state["message"]
    assert again["reconciles"] == state["reconciles"]
    reported = [r for r in caplog.records if getattr(r, "error", None) == expected]
    assert len(reported) == 1, [r.getMessage() for r in caplog.records]
