"""`aioreconcile run` without `--config` (CRD mode), end to end: the CRDs from the chart
installed in the real apiserver, Syncs applied and read with kubectl, a real git daemon (and a
smart-HTTP server with a password), the controller in-process watching the test's namespace."""

import base64
import hashlib
import hmac
import json
import sys
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
from kubernetes_asyncio.client.rest import ApiException

from aioreconcile import runtime
from aioreconcile.engine.receivers import webhook_path
from aioreconcile.testing.pytest_plugin import Kube
from tests.git.conftest import HttpGit, Upstream, git_http

pytestmark = pytest.mark.integration

__all__ = ["git_http"]

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "charts" / "aioreconcile" / "crds"
GROUP, VERSION = "aioreconcile.dev", "v1alpha1"
MakeUpstream = Callable[[str], Upstream]


async def kubectl(kube: Kube, *args: str, stdin: str | None = None) -> str:
    done = await anyio.run_process(
        ["kubectl", "--kubeconfig", str(kube.kubeconfig), *args],
        input=stdin.encode() if stdin is not None else None,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.fixture(scope="module")
async def crds(kube: Kube) -> Kube:
    await kubectl(
        kube, "apply", "--server-side", "--field-manager=aioreconcile-tests", "-f", str(CRDS)
    )
    await kubectl(
        kube,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/syncs.aioreconcile.dev",
        "crd/receivers.aioreconcile.dev",
    )
    return kube


def config_maps(namespace: str, *names: str, value: str = "v1") -> dict[str, str]:
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"value": value},
        }
        for name in names
    ]
    return {"deploy/objects.yaml": yaml.safe_dump_all(docs)}


def sync(name: str, namespace: str, url: str, **spec: Any) -> dict[str, Any]:
    source = {"url": url, "ref": "main", "path": "deploy", "interval": "1h"} | spec.pop(
        "source", {}
    )
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": source, **spec},
    }


@dataclass
class Cluster:
    kube: Kube
    namespace: str
    core: Any
    custom: Any
    ops_port: int
    port: int  # webhooks

    async def apply(self, *docs: dict[str, Any]) -> None:
        await kubectl(self.kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    async def get_sync(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "syncs", name
        )
        return found

    async def wait_sync(
        self, name: str, check: Callable[[dict[str, Any]], bool], *, timeout_s: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = await self.get_sync(name)
            except ApiException as e:
                if e.status != 404:
                    raise
                last = {}
            if check(last):
                return last
            await anyio.sleep(0.2)
        raise AssertionError(f"Sync {name} never got there: {json.dumps(last.get('status'))}")

    async def config_map(self, name: str) -> dict[str, Any] | None:
        try:
            found = await self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(client.ApiClient().sanitize_for_serialization(found))

    async def events(self, name: str) -> list[dict[str, Any]]:
        found = await self.custom.list_namespaced_custom_object(
            "events.k8s.io", "v1", self.namespace, "events"
        )
        return [e for e in found["items"] if e["regarding"].get("name") == name]

    async def metric(self, name: str) -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.ops_port}/metrics") as response,
        ):
            text = await response.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def ready(revision: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        ok = (conditions.get("Ready") or {}).get("status") == "True"
        current = status.get("observedGeneration") == obj["metadata"]["generation"]
        return (
            ok and current and (revision is None or status.get("lastAppliedRevision") == revision)
        )

    return check


def reason(expected: str) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        conditions = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        return (conditions.get("Ready") or {}).get("reason") == expected

    return check


@asynccontextmanager
async def crd_controller(
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    *,
    kubeconfig: Path | None = None,
    **settings: Any,
) -> AsyncIterator[Cluster]:
    """The controller in CRD mode, as ``kubeconfig``'s user (default the admin's); the test
    acts as the admin."""
    run = runtime.RunSettings(
        config=None,
        cluster=runtime.ClusterSettings(kubeconfig=kubeconfig or kube.kubeconfig),
        listen_port=0,
        ops_port=0,
        watch_namespace=namespace,
        cache_dir=tmp_path / "git-cache",
        **settings,
    )
    async with anyio.create_task_group() as tasks:
        ports = await tasks.start(runtime.run_controller, run)
        yield Cluster(
            kube,
            namespace,
            client.CoreV1Api(kube.api),
            client.CustomObjectsApi(kube.api),
            ports.ops,
            ports.webhooks,
        )
        tasks.cancel_scope.cancel()


async def test_an_applied_sync_becomes_ready_with_its_revision_in_kubectl_get(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    repo = upstream("shop")
    sha = repo.commit(config_maps(namespace, "a", "b"))
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(sync("shop", namespace, git_daemon + "shop.git"))
        await kubectl(
            crds, "wait", "--for=condition=Ready", "--timeout=60s", "sync/shop", "-n", namespace
        )
        table = await kubectl(crds, "get", "syncs", "-n", namespace)
        header, row = table.splitlines()
        columns = dict(zip(header.split(), row.split()[:4], strict=False))
        assert columns["NAME"] == "shop"
        assert columns["READY"] == "True"
        assert sha in row.split()  # REVISION
        found = await cluster.get_sync("shop")
        status = found["status"]
        assert status["lastAppliedRevision"] == status["lastAttemptedRevision"] == sha
        assert status["inventorySize"] == 2
        assert status["observedGeneration"] == found["metadata"]["generation"]
        assert "aioreconcile.dev/finalizer" in found["metadata"]["finalizers"]
        live = await cluster.config_map("a")
        assert live is not None
        assert live["metadata"]["labels"]["aioreconcile.dev/sync"] == f"{namespace}.shop"
        # The inventory in the Sync's namespace, as a rebuild from labels looks for it.
        assert (
            live["metadata"]["annotations"]["aioreconcile.dev/inventory"]
            == f"{namespace}/aioreconcile-inventory-shop"
        )
        inventory = await cluster.config_map("aioreconcile-inventory-shop")
        assert inventory is not None
        with anyio.fail_after(30):
            while not [e for e in await cluster.events("shop") if e["reason"] == "Applied"]:
                await anyio.sleep(0.2)
        applied = [e for e in await cluster.events("shop") if e["reason"] == "Applied"]
        assert sha in applied[0]["note"]
        assert "2 created" in applied[0]["note"]


async def test_a_sync_the_schema_takes_but_the_parser_refuses_is_stalled_naming_the_field(
    crds: Kube, namespace: str, git_daemon: str, tmp_path: Path
) -> None:
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        # U+2028 passes the CRD's pattern (ASCII controls only) but would forge a log line.
        body = sync("odd", namespace, git_daemon + "x.git", source={"ref": "main\u2028x"})
        await cluster.apply(body)
        found = await cluster.wait_sync("odd", reason("InvalidSpec"))
        conditions = {c["type"]: c for c in found["status"]["conditions"]}
        assert conditions["Ready"]["status"] == "False"
        assert conditions["Stalled"]["status"] == "True"
        assert "spec.source.ref" in conditions["Ready"]["message"]


async def test_live_edit_suspend_and_resume_take_effect_without_restart(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    repo = upstream("live")
    files = config_maps(namespace, "first") | {
        "other/objects.yaml": config_maps(namespace, "second")["deploy/objects.yaml"]
    }
    sha = repo.commit(files)
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(sync("live", namespace, git_daemon + "live.git"))
        await cluster.wait_sync("live", ready(sha))
        assert await cluster.config_map("first") is not None

        # Edit the path: the same commit, other objects; the old one is pruned.
        await cluster.apply(
            sync("live", namespace, git_daemon + "live.git", source={"path": "other"})
        )
        await cluster.wait_sync("live", ready(sha))
        assert await cluster.config_map("second") is not None
        assert await cluster.config_map("first") is None
        with anyio.fail_after(30):
            while not [e for e in await cluster.events("live") if e["reason"] == "Pruned"]:
                await anyio.sleep(0.2)

        # Suspend: a new commit is not applied, even when asked.
        await cluster.apply(
            sync("live", namespace, git_daemon + "live.git", source={"path": "other"}, suspend=True)
        )
        await cluster.wait_sync(
            "live",
            lambda o: o.get("status", {}).get("observedGeneration") == o["metadata"]["generation"],
        )
        newer = repo.commit(
            config_maps(namespace, "second", value="v2")
            | {
                "other/objects.yaml": config_maps(namespace, "second", value="v2")[
                    "deploy/objects.yaml"
                ]
            }
        )
        await kubectl(
            crds,
            "annotate",
            "--overwrite",
            "sync/live",
            "-n",
            namespace,
            "reconcile.aioreconcile.dev/requestedAt=one",
        )
        await anyio.sleep(2)
        second = await cluster.config_map("second")
        assert second is not None
        assert second["data"]["value"] == "v1"

        # Resume: the head is applied at once.
        await cluster.apply(
            sync("live", namespace, git_daemon + "live.git", source={"path": "other"})
        )
        await cluster.wait_sync("live", ready(newer))
        second = await cluster.config_map("second")
        assert second is not None
        assert second["data"]["value"] == "v2"


@pytest.mark.parametrize("prune", [True, False])
async def test_deleting_a_sync_prunes_or_releases_its_objects(
    crds: Kube,
    namespace: str,
    upstream: MakeUpstream,
    git_daemon: str,
    tmp_path: Path,
    prune: bool,
) -> None:
    repo = upstream("gone")
    repo.commit(config_maps(namespace, "kept-or-not"))
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(sync("gone", namespace, git_daemon + "gone.git", prune=prune))
        await cluster.wait_sync("gone", ready())
        await kubectl(crds, "delete", "sync/gone", "-n", namespace, "--timeout=60s")
        left = await cluster.config_map("kept-or-not")
        if prune:
            assert left is None
        else:
            assert left is not None
            labels = left["metadata"].get("labels") or {}
            assert "aioreconcile.dev/sync" not in labels
            assert "app.kubernetes.io/managed-by" not in labels
        assert await cluster.config_map("aioreconcile-inventory-gone") is None


async def test_deleting_a_sync_while_it_applies_leaves_nothing_behind(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    repo = upstream("busy")
    names = [f"busy-{i}" for i in range(60)]
    repo.commit(config_maps(namespace, *names))
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(sync("busy", namespace, git_daemon + "busy.git"))
        with anyio.fail_after(60):
            while (
                await cluster.config_map("busy-0") is None
                and await cluster.config_map("busy-59") is None
            ):
                await anyio.sleep(0.02)
        await kubectl(crds, "delete", "sync/busy", "-n", namespace, "--timeout=60s")
        listed = await cluster.core.list_namespaced_config_map(
            namespace, label_selector="aioreconcile.dev/sync"
        )
        assert [item.metadata.name for item in listed.items] == []


async def test_a_rotated_git_password_is_used_without_restart_and_never_shown(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_http: HttpGit, tmp_path: Path
) -> None:
    repo = upstream("private")
    sha = repo.commit(config_maps(namespace, "private"))
    wrong = "0ld-pa55word-do-not-print"

    def secret(password: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "git-creds", "namespace": namespace},
            "data": {
                "username": base64.b64encode(git_http.username.encode()).decode(),
                "password": base64.b64encode(password.encode()).decode(),
            },
        }

    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(secret(wrong))
        await cluster.apply(
            sync(
                "private",
                namespace,
                git_http.base + "private.git",
                source={"secretRef": {"name": "git-creds"}},
            )
        )
        failed = await cluster.wait_sync("private", reason("FetchFailed"))
        assert wrong not in json.dumps(failed)
        with anyio.fail_after(30):
            while not [e for e in await cluster.events("private") if e["reason"] == "FetchFailed"]:
                await anyio.sleep(0.2)
        (event,) = [e for e in await cluster.events("private") if e["reason"] == "FetchFailed"]
        assert event["type"] == "Warning"
        assert "private.git" in event["note"]
        await cluster.apply(secret(git_http.password))
        found = await cluster.wait_sync("private", ready(sha))  # retried with backoff
        text = json.dumps(found) + json.dumps(await cluster.events("private"))
        assert git_http.password not in text
        assert wrong not in text
        assert git_http.leaking_commands == []


async def test_a_heal_storm_makes_a_bounded_number_of_status_writes_and_events(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    repo = upstream("storm")
    names = [f"storm-{i}" for i in range(200)]
    repo.commit(config_maps(namespace, *names))
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(sync("storm", namespace, git_daemon + "storm.git"))
        await cluster.wait_sync("storm", ready(), timeout_s=120)
        await anyio.sleep(2)
        writes_before = await cluster.metric("aioreconcile_sync_status_writes_total")
        events_before = len(await cluster.events("storm"))
        started = time.monotonic()
        patch = {"data": {"value": "edited"}}
        async with anyio.create_task_group() as tasks:
            for name in names:
                tasks.start_soon(cluster.core.patch_namespaced_config_map, name, namespace, patch)
        heals_wanted = len(names)
        found = await cluster.wait_sync(
            "storm",
            lambda o: (o.get("status") or {}).get("driftHeals", 0) >= heals_wanted,
            timeout_s=120,
        )
        seconds = time.monotonic() - started
        await anyio.sleep(2)
        writes = await cluster.metric("aioreconcile_sync_status_writes_total") - writes_before
        events = await cluster.events("storm")
        healed = [e for e in events if e["reason"] == "Healed"]
        made = len(events) - events_before
        print(
            f"heal storm: {heals_wanted} heals in {seconds:.1f}s, "
            f"{writes:.0f} status writes, {made} events"
        )
        assert found["status"]["driftHeals"] >= heals_wanted
        # At most one status write per second (plus one for the last change).
        assert 1 <= writes <= seconds + 3
        # One Healed Event per window (30 s): the storm is one or two Events, with a count.
        assert 1 <= len(healed) <= 2 + seconds / 30
        assert made <= 4
        counted = sum((e.get("series") or {}).get("count", 1) for e in healed)
        assert counted >= 1


async def test_a_sync_waits_for_the_syncs_it_depends_on(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    base, app = upstream("base"), upstream("app")
    base.commit(config_maps(namespace, "base"))
    app.commit(config_maps(namespace, "app"))
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(
            sync("app", namespace, git_daemon + "app.git", dependsOn=[{"name": "base"}])
        )
        await cluster.wait_sync("app", reason("DependencyNotReady"))
        assert await cluster.config_map("app") is None
        await cluster.apply(sync("base", namespace, git_daemon + "base.git"))
        await cluster.wait_sync("app", ready(), timeout_s=90)
        base_cm, app_cm = await cluster.config_map("base"), await cluster.config_map("app")
        assert base_cm is not None
        assert app_cm is not None
        assert base_cm["metadata"]["creationTimestamp"] <= app_cm["metadata"]["creationTimestamp"]


async def test_status_writes_do_not_trigger_reconciles(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    repo = upstream("quiet")
    repo.commit(config_maps(namespace, "quiet"))
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(sync("quiet", namespace, git_daemon + "quiet.git"))
        await cluster.wait_sync("quiet", ready())
        await anyio.sleep(1.5)
        reconciles = await cluster.metric("aioreconcile_reconcile_total")
        writes = await cluster.metric("aioreconcile_sync_status_writes_total")
        await anyio.sleep(3)
        assert await cluster.metric("aioreconcile_reconcile_total") == reconciles
        assert await cluster.metric("aioreconcile_sync_status_writes_total") == writes


async def cli(kube: Kube, *args: str) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "aioreconcile", *args, "--kubeconfig", str(kube.kubeconfig)],
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_reconcile_suspend_and_resume_verbs(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    repo = upstream("verbs")
    repo.commit(config_maps(namespace, "verbs"))
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(sync("verbs", namespace, git_daemon + "verbs.git"))
        await cluster.wait_sync("verbs", ready())
        newer = repo.commit(config_maps(namespace, "verbs", value="v2"))  # no poll for 1h

        code, out, err = await cli(crds, "reconcile", "sync", "verbs", "-n", namespace)
        assert code == 0, err
        assert f"revision: {newer}" in out
        assert "1 configured" in out
        found = await cluster.get_sync("verbs")
        handled = found["status"]["lastHandledReconcileAt"]
        assert found["metadata"]["annotations"]["reconcile.aioreconcile.dev/requestedAt"] == handled

        code, out, err = await cli(crds, "suspend", "sync", "verbs", "-n", namespace)
        assert code == 0, err
        assert (await cluster.get_sync("verbs"))["spec"]["suspend"] is True
        code, _, err = await cli(
            crds, "reconcile", "sync", "verbs", "-n", namespace, "--timeout", "3"
        )
        assert code == 3, err  # a suspended Sync handles no request
        code, out, err = await cli(crds, "resume", "sync", "verbs", "-n", namespace)
        assert code == 0, err
        assert (await cluster.get_sync("verbs"))["spec"]["suspend"] is False
        code, out, err = await cli(crds, "reconcile", "sync", "verbs", "-n", namespace)
        assert code == 0, err

        code, _, err = await cli(crds, "reconcile", "sync", "absent", "-n", namespace)
        assert code == 2
        assert "absent" in err


def token_secret(namespace: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hook-token", "namespace": namespace},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def receiver(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Receiver",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"provider": "github", "secretRef": {"name": "hook-token"}, **spec},
    }


async def deliver(port: int, path: str, token: str, url: str, sha: str) -> tuple[int, Any]:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": sha,
            "repository": {"clone_url": url, "html_url": url},
            "head_commit": {"id": sha, "message": "change"},
            "commits": [],
        }
    ).encode()
    signature = hmac.new(token.encode(), body, hashlib.sha256).hexdigest()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}{path}",
            data=body,
            headers={
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": f"d-{time.time()}",
                "X-Hub-Signature-256": f"sha256={signature}",
                "Content-Type": "application/json",
            },
        ) as response,
    ):
        return response.status, await response.json()


async def test_receivers_are_served_at_their_derived_path_and_trigger_only_their_syncs(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    repo = upstream("hooked")
    sha = repo.commit(config_maps(namespace, "hooked"))
    url = git_daemon + "hooked.git"
    token = "hook-t0ken-1"
    async with crd_controller(crds, namespace, tmp_path) as cluster:
        await cluster.apply(token_secret(namespace, token))
        web, other = sync("web", namespace, url), sync("other", namespace, url)
        web["metadata"]["labels"] = {"tier": "web"}
        await cluster.apply(web, other, sync("api", namespace, url))
        await cluster.apply(
            receiver("named", namespace, syncs=["api"]),
            receiver("selected", namespace, selector={"matchLabels": {"tier": "web"}}),
        )
        paths: dict[str, str] = {}
        for name in ("named", "selected"):
            with anyio.fail_after(30):
                while True:
                    found = await cluster.custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, "receivers", name
                    )
                    status = found.get("status") or {}
                    if status.get("webhookPath") and status.get("observedGeneration") == 1:
                        break
                    await anyio.sleep(0.2)
            paths[name] = status["webhookPath"]
            assert paths[name] == webhook_path(name, namespace, token=token)
            assert status["conditions"][0]["status"] == "True"
        table = await kubectl(crds, "get", "receivers", "-n", namespace)
        assert paths["named"] in table

        code, answer = await deliver(cluster.port, paths["named"], token, url, sha)
        assert code == 202, answer
        assert answer["triggered"] == [f"{namespace}.api"]
        code, answer = await deliver(cluster.port, paths["selected"], token, url, sha)
        assert code == 202, answer
        assert answer["triggered"] == [f"{namespace}.web"]
        code, _ = await deliver(cluster.port, "/hooks/named", token, url, sha)
        assert code == 404  # never by name

        # A rotated token moves the path; the old one stops answering.
        rotated = "hook-t0ken-2"
        await cluster.apply(token_secret(namespace, rotated))
        moved = webhook_path("named", namespace, token=rotated)
        with anyio.fail_after(30):
            while (
                await cluster.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "receivers", "named"
                )
            )["status"]["webhookPath"] != moved:
                await anyio.sleep(0.2)
        code, _ = await deliver(cluster.port, paths["named"], token, url, sha)
        assert code == 404
        code, answer = await deliver(cluster.port, moved, rotated, url, sha)
        assert code == 202, answer


async def test_the_documented_rbac_is_enough_for_crd_mode(
    crds: Kube, namespace: str, upstream: MakeUpstream, git_daemon: str, tmp_path: Path
) -> None:
    """The controller as a token-authenticated ServiceAccount holding exactly the rules
    docs/crds.md lists (for Syncs applying ConfigMaps, without serviceAccountName)."""
    core, rbac = client.CoreV1Api(crds.api), client.RbacAuthorizationV1Api(crds.api)
    await core.create_namespaced_service_account(namespace, {"metadata": {"name": "controller"}})
    rules = [
        {
            "apiGroups": [GROUP],
            "resources": ["syncs", "receivers"],
            "verbs": ["get", "list", "watch", "patch"],
        },
        {
            "apiGroups": [GROUP],
            "resources": ["syncs/status", "receivers/status"],
            "verbs": ["patch"],
        },
        {
            "apiGroups": [""],
            "resources": ["secrets", "configmaps"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch", "delete"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    ]
    role = f"{namespace}-crd-controller"
    await rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
    await rbac.create_cluster_role_binding(
        {
            "metadata": {"name": role},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "controller", "namespace": namespace}],
        }
    )
    issued = await core.create_namespaced_service_account_token(
        "controller", namespace, {"spec": {"expirationSeconds": 600}}
    )
    document = yaml.safe_load(crds.kubeconfig.read_text())
    document["users"][0]["user"] = {"token": issued.status.token}
    kubeconfig = tmp_path / "controller.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(document))

    repo = upstream("rbac")
    sha = repo.commit(config_maps(namespace, "rbac"))
    try:
        async with crd_controller(crds, namespace, tmp_path, kubeconfig=kubeconfig) as cluster:
            await cluster.apply(sync("rbac", namespace, git_daemon + "rbac.git"))
            await cluster.wait_sync("rbac", ready(sha))
            with anyio.fail_after(30):
                while not [e for e in await cluster.events("rbac") if e["reason"] == "Applied"]:
                    await anyio.sleep(0.2)
            await kubectl(crds, "delete", "sync/rbac", "-n", namespace, "--timeout=60s")
            assert await cluster.config_map("rbac") is None
    finally:
        await rbac.delete_cluster_role_binding(role)
        await rbac.delete_cluster_role(role)
