"""`aioreconcile run` end to end: real apiserver, real git daemon, real webhooks, real drift."""

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile import runtime
from aioreconcile.testing.pytest_plugin import Kube
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-for-tests"


def config_map(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def deployment(name: str, namespace: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
            },
        },
    }


def manifests(*docs: dict[str, Any]) -> dict[str, str]:
    return {"deploy/objects.yaml": yaml.safe_dump_all(docs)}


@dataclass
class Running:
    port: int  # webhooks
    ops_port: int  # /status, /metrics, /healthz, /readyz
    repo: Upstream
    url: str
    namespace: str
    core: Any
    apps: Any

    async def status(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.ops_port}/status") as response,
        ):
            document: dict[str, Any] = await response.json()
            return document

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.ops_port}/metrics") as response,
        ):
            return await response.text()

    async def restored(self) -> bool:
        """The ConfigMap ``settings`` holds Git's value again."""
        cm = await self.core.read_namespaced_config_map("settings", self.namespace)
        return bool(cm.data == {"v": "git"})

    async def sync_state(self, name: str = "app") -> dict[str, Any]:
        return next(s for s in (await self.status())["syncs"] if s["name"] == name)

    async def wait_for(self, check: Callable[[], Any], *, seconds: float = 20) -> None:
        with anyio.fail_after(seconds):
            while not await check():
                await anyio.sleep(0.05)

    async def push_webhook(
        self, sha: str, before: str = "0" * 40, *, traceparent: str | None = None
    ) -> aiohttp.ClientResponse:
        body = json.dumps(
            {
                "ref": "refs/heads/main",
                "before": before,
                "after": sha,
                "created": False,
                "deleted": False,
                "forced": False,
                "repository": {"clone_url": self.url, "html_url": self.url},
                "head_commit": {"id": sha, "message": "change"},
                "commits": [],
            }
        ).encode()
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{self.port}/hooks/github",
                data=body,
                headers={
                    "X-GitHub-Event": "push",
                    "X-GitHub-Delivery": f"d-{sha}-{time.time()}",
                    "X-Hub-Signature-256": f"sha256={signature}",
                    "Content-Type": "application/json",
                    **({"traceparent": traceparent} if traceparent else {}),
                },
            ) as response,
        ):
            await response.read()
            return response


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)


@asynccontextmanager
async def controller(
    kube: Kube,
    namespace: str,
    repo: Upstream,
    daemon: str,
    tmp_path: Path,
    *,
    self_heal: bool = True,
    interval: str = "1h",
) -> AsyncIterator[Running]:
    url = f"{daemon}{repo.name}.git"
    config = {
        "syncs": [
            {
                "name": "app",
                "source": {"url": url, "ref": "main", "path": "deploy", "interval": interval},
                "targetNamespace": namespace,
                "selfHeal": self_heal,
            }
        ],
        "receivers": [
            {
                "name": "github",
                "provider": "github",
                "secretEnv": "TEST_WEBHOOK_SECRET",
                "syncs": ["app"],
            }
        ],
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    settings = runtime.RunSettings(
        config=config_path,
        cluster=runtime.ClusterSettings(kubeconfig=kube.kubeconfig),
        listen_port=0,
        ops_port=0,
        namespace=namespace,
        cache_dir=tmp_path / "git-cache",
    )
    async with anyio.create_task_group() as tasks:
        ports = await tasks.start(runtime.run_controller, settings)
        running = Running(
            ports.webhooks,
            ports.ops,
            repo,
            url,
            namespace,
            client.CoreV1Api(kube.api),
            client.AppsV1Api(kube.api),
        )
        try:
            yield running
        finally:
            tasks.cancel_scope.cancel()


async def applied(running: Running, sha: str) -> bool:
    state = await running.sync_state()
    return bool(state["lastAppliedRevision"] == sha)


async def test_push_through_webhook_is_applied_without_any_poll(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("push")
    first = repo.commit(manifests(config_map("settings", namespace, v="1")))
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, first))
        second = repo.commit(manifests(config_map("settings", namespace, v="2")))

        response = await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second), seconds=10)

        assert response.status == 202
        stored = await running.core.read_namespaced_config_map("settings", namespace)
        assert stored.data == {"v": "2"}
        assert stored.metadata.annotations["aioreconcile.dev/revision"] == second


async def test_drift_is_healed_and_what_git_does_not_declare_is_left_alone(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("drift")
    sha = repo.commit(
        manifests(config_map("settings", namespace, v="git"), deployment("web", namespace))
    )
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, sha))
        core, apps = running.core, running.apps

        # Another field manager edits a declared value: restored.
        await core.patch_namespaced_config_map(
            "settings", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )

        await running.wait_for(running.restored, seconds=10)

        # Deleted: recreated.
        await apps.delete_namespaced_deployment("web", namespace)

        async def recreated() -> bool:
            try:
                await apps.read_namespaced_deployment("web", namespace)
            except client.exceptions.ApiException:
                return False
            return True

        await running.wait_for(recreated, seconds=10)

        # Scaled where Git says nothing about replicas: left alone, no fight.
        heals_before = (await running.sync_state())["driftHeals"]
        await apps.patch_namespaced_deployment(
            "web", namespace, {"spec": {"replicas": 5}}, field_manager="autoscaler"
        )
        await anyio.sleep(1.0)
        scaled = await apps.read_namespaced_deployment("web", namespace)
        assert scaled.spec.replicas == 5
        assert (await running.sync_state())["driftHeals"] == heals_before


async def test_ten_rapid_edits_coalesce_into_few_heals(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("burst")
    sha = repo.commit(manifests(config_map("settings", namespace, v="git")))
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, sha))
        core = running.core
        for i in range(10):
            await core.patch_namespaced_config_map(
                "settings", namespace, {"data": {"v": f"edit-{i}"}}, field_manager="intruder"
            )

        await running.wait_for(running.restored, seconds=10)
        await anyio.sleep(0.5)

        heals = (await running.sync_state())["driftHeals"]
        assert 1 <= heals < 10
        assert await running.restored()


async def test_self_heal_false_reports_drift_without_fixing_it(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("report")
    sha = repo.commit(manifests(config_map("settings", namespace, v="git")))
    async with controller(kube, namespace, repo, git_daemon, tmp_path, self_heal=False) as running:
        await running.wait_for(lambda: applied(running, sha))
        await running.core.patch_namespaced_config_map(
            "settings", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )

        async def reported() -> bool:
            return bool((await running.sync_state())["driftReported"] >= 1)

        await running.wait_for(reported, seconds=10)
        stored = await running.core.read_namespaced_config_map("settings", namespace)
        assert stored.data == {"v": "edited"}
        assert (await running.sync_state())["driftHeals"] == 0


async def test_watches_resume_after_apiserver_restart_and_heal(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("restart")
    sha = repo.commit(manifests(config_map("settings", namespace, v="git")))
    async with controller(kube, namespace, repo, git_daemon, tmp_path) as running:
        await running.wait_for(lambda: applied(running, sha))

        await kube.control_plane.restart_apiserver()
        # Edited right after the restart, before (or while) our watch reconnects.
        for _ in range(2):
            try:
                await running.core.patch_namespaced_config_map(
                    "settings", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
                )
                break
            except aiohttp.ClientError:
                continue

        await running.wait_for(running.restored, seconds=20)
