"""What a push plans and writes: only the documents it changed (and the objects a watch saw
drift or vanish), and a value Git changed without a dry-run first.

`aioreconcile run` in-process against the real apiserver and a real ``git daemon``. Requests
are counted on the way out of the real transport (``KubeTransport.request``, wrapped: every
request still goes to the apiserver and its answer comes back unchanged).
"""

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from kubernetes_asyncio import client

from aioreconcile.adapters.kube.transport import KubeTransport
from aioreconcile.engine import manifests
from aioreconcile.testing.pytest_plugin import Kube
from tests.e2e.test_controller import Running, config_map, deployment, secret_env
from tests.e2e.test_push_paths import controller
from tests.git.conftest import Upstream

pytestmark = pytest.mark.integration
__all__ = ["secret_env"]

Request = tuple[str, str, dict[str, str]]  # method, path, params


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[Request]:
    """Every request the controller's transports send, in order."""
    seen: list[Request] = []
    original = KubeTransport.request

    async def recording(self: KubeTransport, method: str, path: str, **kwargs: Any) -> Any:
        seen.append((method, path, dict(kwargs.get("params") or {})))
        return await original(self, method, path, **kwargs)

    monkeypatch.setattr(KubeTransport, "request", recording)
    return seen


def writes_of(requests: list[Request], kind_path: str) -> list[Request]:
    """PATCHes (server-side apply) of objects under ``.../<kind_path>/``, dry-runs included."""
    return [r for r in requests if r[0] == "PATCH" and f"/{kind_path}/" in r[1]]


def dry_runs(requests: list[Request]) -> list[Request]:
    return [r for r in requests if r[2].get("dryRun") == "All"]


def with_image(image: str, namespace: str) -> dict[str, Any]:
    body = deployment("web", namespace)
    body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return body


def cms(namespace: str, **values: str) -> dict[str, str]:
    """One file per ConfigMap under apps/app/."""
    return {
        f"apps/app/{name}.yaml": yaml.safe_dump(config_map(name, namespace, v=value))
        for name, value in values.items()
    }


def one_sync(**spec: Any) -> dict[str, dict[str, Any]]:
    return {"app": {"path": "apps/app", **spec}}


async def applied(running: Running, sha: str) -> bool:
    return bool((await running.sync_state("app"))["lastAppliedRevision"] == sha)


async def test_an_image_changed_in_git_is_applied_without_a_dry_run(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
    requests: list[Request],
) -> None:
    """An image is not stored as written (a webhook may pin it), so an object that merely looks
    different is dry-run first; one whose image Git changed needs the write anyway."""
    repo = upstream("image")
    first = repo.commit({"apps/app/web.yaml": yaml.safe_dump(with_image("nginx:1.27", namespace))})
    async with controller(kube, namespace, repo, git_daemon, tmp_path, one_sync()) as running:
        await running.wait_for(lambda: applied(running, first))
        requests.clear()

        second = repo.commit(
            {"apps/app/web.yaml": yaml.safe_dump(with_image("nginx:1.28", namespace))}
        )
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second))

        web = await running.apps.read_namespaced_deployment("web", namespace)
        assert web.spec.template.spec.containers[0].image == "nginx:1.28"
        patches = writes_of(requests, "deployments")
        assert patches, requests
        assert dry_runs(patches) == []
        assert len(patches) == 1


async def test_a_push_writes_and_lists_only_what_its_commit_changed(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
    requests: list[Request],
) -> None:
    """Three ConfigMaps and a Deployment; the push changes one ConfigMap: one PATCH and no
    read of any of them: the Deployment's document did not change, and the ConfigMap is as our
    last write left it (the watch saw nothing else), so neither kind is listed."""
    repo = upstream("changes-only")
    web = {"apps/app/web.yaml": yaml.safe_dump(with_image("nginx:1.27", namespace))}
    first = repo.commit({**cms(namespace, x="1", y="1", z="1"), **web})
    async with controller(kube, namespace, repo, git_daemon, tmp_path, one_sync()) as running:
        await running.wait_for(lambda: applied(running, first))
        before = await running.core.read_namespaced_config_map("y", namespace)
        requests.clear()

        second = repo.commit({**cms(namespace, x="1", y="2", z="1"), **web})
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second))

        after = await running.core.read_namespaced_config_map("y", namespace)
        assert after.data == {"v": "2"}
        assert after.metadata.resource_version != before.metadata.resource_version
        ours = [r for r in writes_of(requests, "configmaps") if "aioreconcile-inv" not in r[1]]
        assert [r[1].rsplit("/", 1)[1] for r in ours] == ["y"]
        # The apply reads and writes in the namespace; the watch (cluster-wide) is not counted.
        assert not [r for r in requests if f"/namespaces/{namespace}/deployments" in r[1]]
        lists = [r for r in requests if r[0] == "GET" and r[1].endswith("/configmaps")]
        assert lists == []


async def test_an_object_deleted_while_the_sync_idled_is_recreated_by_the_next_push(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    """selfHeal: false, so nothing recreates it but the push, whose commit changes another
    object only: the watch saw the deletion, so the push plans it though its document did not
    change."""
    repo = upstream("deleted")
    first = repo.commit(cms(namespace, x="1", y="1"))
    sync = one_sync(selfHeal=False)
    async with controller(kube, namespace, repo, git_daemon, tmp_path, sync) as running:
        await running.wait_for(lambda: applied(running, first))
        await running.core.delete_namespaced_config_map("y", namespace)

        async def seen() -> bool:
            return bool((await running.sync_state("app"))["driftReported"] >= 1)

        await running.wait_for(seen)
        second = repo.commit(cms(namespace, x="2", y="1"))
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second))

        y = await running.core.read_namespaced_config_map("y", namespace)
        assert y.data == {"v": "1"}
        x = await running.core.read_namespaced_config_map("x", namespace)
        assert x.data == {"v": "2"}


async def test_a_drifted_object_whose_document_did_not_change_is_restored_by_a_push(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    """selfHeal: false leaves drift reported, not healed; a push (of another change) applies
    the sync, and with it Git's value of the drifted object, as it always did."""
    repo = upstream("drifted")
    first = repo.commit(cms(namespace, x="1", y="1"))
    sync = one_sync(selfHeal=False)
    async with controller(kube, namespace, repo, git_daemon, tmp_path, sync) as running:
        await running.wait_for(lambda: applied(running, first))
        await running.core.patch_namespaced_config_map(
            "y", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )

        async def reported() -> bool:
            return bool((await running.sync_state("app"))["driftReported"] >= 1)

        await running.wait_for(reported)
        second = repo.commit(cms(namespace, x="2", y="1"))
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second))

        y = await running.core.read_namespaced_config_map("y", namespace)
        assert y.data == {"v": "1"}


async def test_a_document_removed_by_a_push_is_pruned(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    repo = upstream("removed")
    first = repo.commit(cms(namespace, x="1", y="1"))
    sync = one_sync(prune=True)
    async with controller(kube, namespace, repo, git_daemon, tmp_path, sync) as running:
        await running.wait_for(lambda: applied(running, first))
        x_before = await running.core.read_namespaced_config_map("x", namespace)

        (repo.work / "apps/app/y.yaml").unlink()
        second = repo.commit(cms(namespace, x="1"))
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second))

        names = {
            cm.metadata.name
            for cm in (await running.core.list_namespaced_config_map(namespace)).items
        }
        assert "y" not in names
        x = await running.core.read_namespaced_config_map("x", namespace)
        assert x.metadata.resource_version == x_before.metadata.resource_version


async def test_an_object_opted_out_while_the_sync_idled_is_left_alone_by_the_next_push(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    """Someone annotates y ``reconcile: disabled`` on the cluster (no drift of our fields), then
    Git changes y: the push must read it again and skip it, not write it unread."""
    repo = upstream("opted-out")
    first = repo.commit(cms(namespace, x="1", y="1"))
    async with controller(kube, namespace, repo, git_daemon, tmp_path, one_sync()) as running:
        await running.wait_for(lambda: applied(running, first))
        disabled = {"metadata": {"annotations": {"aioreconcile.dev/reconcile": "disabled"}}}
        await running.core.patch_namespaced_config_map(
            "y", namespace, disabled, field_manager="intruder"
        )
        await anyio.sleep(1)  # the watch event arrives (nothing to wait for: not a drift)

        second = repo.commit(cms(namespace, x="2", y="2"))
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second))

        y = await running.core.read_namespaced_config_map("y", namespace)
        assert y.data == {"v": "1"}
        x = await running.core.read_namespaced_config_map("x", namespace)
        assert x.data == {"v": "2"}


async def test_a_kind_installed_out_of_band_since_the_last_push_is_discovered_and_applied(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
) -> None:
    """A push on the planned-changes path renders with the discovery it has; a kind it does not
    know (a CRD someone installed meanwhile) makes it refresh and render again, so the new
    object, which names no namespace, gets the sync's target namespace."""
    group = f"t{secrets.token_hex(3)}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    extensions = client.ApiextensionsV1Api(kube.api)
    repo = upstream("new-kind")
    first = repo.commit(cms(namespace, x="1"))
    async with controller(kube, namespace, repo, git_daemon, tmp_path, one_sync()) as running:
        await running.wait_for(lambda: applied(running, first))
        await extensions.create_custom_resource_definition(crd)
        try:

            async def established() -> bool:
                got = await extensions.read_custom_resource_definition(f"gadgets.{group}")
                conditions = got.status.conditions or []
                return any(c.type == "Established" and c.status == "True" for c in conditions)

            await running.wait_for(established)
            gadget = {"apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "g"}}
            second = repo.commit(
                {**cms(namespace, x="2"), "apps/app/gadget.yaml": yaml.safe_dump(gadget)}
            )
            reconciles = (await running.sync_state("app"))["reconciles"]
            await running.push_webhook(second, before=first)
            await running.wait_for(lambda: applied(running, second))

            # Applied by the push's own reconcile, not by a retry after a failed one.
            assert (await running.sync_state("app"))["reconciles"] == reconciles + 1
            stored = await client.CustomObjectsApi(kube.api).get_namespaced_custom_object(
                group, "v1", namespace, "gadgets", "g"
            )
            assert stored["metadata"]["namespace"] == namespace
        finally:
            await extensions.delete_custom_resource_definition(f"gadgets.{group}")


async def test_an_object_healed_before_the_push_costs_the_push_no_read(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
    requests: list[Request],
) -> None:
    """y drifts and is healed (selfHeal: true); the push changes x: y is as our heal left it,
    so neither it nor x is read (no LIST of ConfigMaps), and x is written once."""
    repo = upstream("healed")
    first = repo.commit(cms(namespace, x="1", y="1"))
    async with controller(kube, namespace, repo, git_daemon, tmp_path, one_sync()) as running:
        await running.wait_for(lambda: applied(running, first))
        await running.core.patch_namespaced_config_map(
            "y", namespace, {"data": {"v": "edited"}}, field_manager="intruder"
        )

        async def healed() -> bool:
            return bool((await running.sync_state("app"))["driftHeals"] >= 1)

        await running.wait_for(healed)
        requests.clear()
        second = repo.commit(cms(namespace, x="2", y="1"))
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second))

        x = await running.core.read_namespaced_config_map("x", namespace)
        assert x.data == {"v": "2"}
        ours = [r for r in writes_of(requests, "configmaps") if "aioreconcile-inv" not in r[1]]
        assert [r[1].rsplit("/", 1)[1] for r in ours] == ["x"]
        assert [r for r in requests if r[0] == "GET" and r[1].endswith("/configmaps")] == []


@pytest.fixture
def documents_parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many YAML documents each call of the one YAML parse (``_load_yaml``) read; the
    real parse still runs."""
    counts: list[int] = []
    original = manifests._load_yaml

    def counting(text: str, *, origin: str) -> list[tuple[int, object]]:
        loaded = original(text, origin=origin)
        counts.append(len(loaded))
        return loaded

    monkeypatch.setattr(manifests, "_load_yaml", counting)
    return counts


def stream(
    namespace: str | None, values: dict[str, str], labels: dict[str, str] | None = None
) -> str:
    """One file holding a ConfigMap per value, ``---`` between them; no namespace written when
    ``namespace`` is None (the sync's ``targetNamespace`` applies)."""
    documents = []
    for name, value in values.items():
        body = config_map(name, namespace or "", v=value)
        if namespace is None:
            del body["metadata"]["namespace"]
        if labels:
            body["metadata"]["labels"] = labels
        documents.append(yaml.safe_dump(body))
    return "---\n".join(documents)


async def test_a_push_parses_only_the_documents_whose_text_changed(
    kube: Kube,
    namespace: str,
    upstream: Callable[[str], Upstream],
    git_daemon: str,
    tmp_path: Path,
    secret_env: None,
    documents_parsed: list[int],
) -> None:
    """Eight ConfigMaps in two files, two of them leaving their namespace to the sync's
    ``targetNamespace``. A push that changes one document parses that one only. One that moves
    a document to the other file and changes another (its namespace now left to the default,
    a label added) parses the changed one only, and the cluster is as the commit says."""
    repo = upstream("parse-only-changes")
    values = {f"c{i}": "1" for i in range(6)}
    defaulted = stream(None, {"d0": "1", "d1": "1"})
    first = repo.commit(
        {"apps/app/many.yaml": stream(namespace, values), "apps/app/defaulted.yaml": defaulted}
    )
    async with controller(kube, namespace, repo, git_daemon, tmp_path, one_sync()) as running:
        await running.wait_for(lambda: applied(running, first))
        documents_parsed.clear()

        values["c3"] = "2"
        second = repo.commit(
            {
                "apps/app/many.yaml": stream(namespace, values),
                "apps/app/defaulted.yaml": defaulted,
            }
        )
        await running.push_webhook(second, before=first)
        await running.wait_for(lambda: applied(running, second))
        assert sum(documents_parsed) == 1, documents_parsed
        c3 = await running.core.read_namespaced_config_map("c3", namespace)
        assert c3.data == {"v": "2"}

        documents_parsed.clear()
        unchanged = {k: v for k, v in values.items() if k not in ("c0", "c5")}
        many = stream(None, {"c0": "1"}, {"edited": "yes"}) + "---\n" + stream(namespace, unchanged)
        moved = defaulted + "---\n" + stream(namespace, {"c5": "1"})  # c5's text as it was
        third = repo.commit({"apps/app/many.yaml": many, "apps/app/defaulted.yaml": moved})
        await running.push_webhook(third, before=second)
        await running.wait_for(lambda: applied(running, third))
        assert sum(documents_parsed) == 1, documents_parsed  # c0
        for name, value in {**values, "d0": "1", "d1": "1"}.items():
            cm = await running.core.read_namespaced_config_map(name, namespace)
            assert cm.data == {"v": value}, name
            assert (cm.metadata.labels or {}).get("edited") == ("yes" if name == "c0" else None)
