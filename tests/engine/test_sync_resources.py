"""A Sync custom resource becomes the same SyncSpec as the file format, through the same rules;
its identity is a valid label value; its status follows the sync's state (kstatus)."""

from dataclasses import replace
from typing import Any

import pytest

from aioreconcile.engine.config import (
    AuthKind,
    DataRef,
    GitSourceSpec,
    ServiceAccountRef,
    SyncSpec,
    VerifyMode,
)
from aioreconcile.engine.configuration import ConfigError, parse_config
from aioreconcile.engine.matching import in_scope
from aioreconcile.engine.naming import is_valid_label_value
from aioreconcile.engine.receivers import webhook_path
from aioreconcile.engine.resources import (
    receiver_from_resource,
    status_changed,
    sync_from_resource,
    sync_identity,
    sync_status,
)


def sync(spec: dict[str, Any], *, name: str = "shop", namespace: str = "team") -> dict[str, Any]:
    return {
        "apiVersion": "aioreconcile.dev/v1alpha1",
        "kind": "Sync",
        "metadata": {"name": name, "namespace": namespace, "generation": 3},
        "spec": spec,
    }


def test_a_sync_resource_and_the_file_entry_give_the_same_spec() -> None:
    shared = {
        "render": {"type": "helm", "releaseName": "shop", "values": {"a": 1}},
        "targetNamespace": "shop",
        "prune": False,
        "selfHeal": False,
        "allowEmpty": True,
        "wait": True,
        "timeout": "2m",
    }
    source = {
        "url": "https://git.example/shop.git",
        "ref": "v1",
        "path": "deploy",
        "interval": "1m30s",
    }
    from_file = parse_config(
        __import__("yaml").safe_dump({"syncs": [{"name": "shop", "source": source, **shared}]}),
        origin="f",
    ).syncs[0]
    from_crd = sync_from_resource(sync({"source": source, **shared}))
    assert from_crd.name == "team.shop"
    assert from_crd.source.interval_s == 90.0
    assert from_crd == replace(from_file, name="team.shop", namespace="team")


def test_secrets_and_keys_are_references_into_the_syncs_namespace() -> None:
    spec = sync_from_resource(
        sync(
            {
                "source": {
                    "url": "ssh://git@git.example/shop.git",
                    "secretRef": {"name": "git-creds"},
                    "verify": {"mode": "ssh", "configMapRef": {"name": "signers"}},
                },
                "serviceAccountName": "deployer",
                "dependsOn": [{"name": "base"}, {"name": "crds", "namespace": "infra"}],
            }
        )
    )
    assert spec.source.auth.kind is AuthKind.SECRET
    assert spec.source.auth.secret == DataRef("Secret", "team", "git-creds")
    assert spec.source.verify.mode is VerifyMode.SSH
    assert spec.source.verify.keys == DataRef("ConfigMap", "team", "signers")
    assert spec.service_account == ServiceAccountRef("team", "deployer")
    assert spec.depends_on == ("team.base", "infra.crds")


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({}, "spec.source: required"),
        ({"source": {"ref": "main"}}, "spec.source.url: required"),
        ({"source": {"url": "ext::sh -c x"}}, "spec.source.url: a '<transport>::<address>'"),
        ({"source": {"url": "https://h/r", "path": "../x"}}, "spec.source.path: must stay inside"),
        ({"source": {"url": "https://h/r", "interval": "soon"}}, "spec.source.interval: 'soon'"),
        ({"source": {"url": "https://h/r"}, "bogus": 1}, "spec.bogus: unknown field"),
        ({"source": {"url": "https://h/r"}, "timeout": "1m"}, "spec.timeout: only used with wait"),
        (
            {"source": {"url": "https://h/r", "verify": {"mode": "gpg"}}},
            "spec.source.verify: mode gpg or ssh needs secretRef or configMapRef",
        ),
        (
            {"source": {"url": "https://h/r"}, "dependsOn": [{"name": "shop"}]},
            "cannot depend on itself",
        ),
    ],
)
def test_a_bad_sync_is_refused_naming_the_crd_field(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        sync_from_resource(sync(spec))
    assert raised.value.origin == "Sync team/shop"
    assert any(problem in p for p in raised.value.problems), raised.value.problems


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("team", "shop"), ("a" * 63, "b" * 63), ("n", "x" * 63), ("a" * 40, "b" * 22)],
)
def test_the_sync_identity_is_a_valid_label_value(namespace: str, name: str) -> None:
    identity = sync_identity(namespace, name)
    assert is_valid_label_value(identity)
    assert identity == sync_identity(namespace, name)


def test_long_identities_of_different_syncs_differ() -> None:
    long = "n" * 60
    assert sync_identity(long, "shop") != sync_identity(long + "x", "shop")
    assert sync_identity("team", "shop") == "team.shop"


NOW, LATER = "2026-12-01T06:00:00Z", "2026-12-01T06:05:00Z"


def view(reason: str | None, message: str = "", **more: object) -> dict[str, object]:
    return {"reason": reason, "message": message, "inventorySize": 2, "driftHeals": 0} | more


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (None, {"Ready": "Unknown", "Reconciling": "True"}),
        ("Progressing", {"Ready": "Unknown", "Reconciling": "True"}),
        ("ReconciliationSucceeded", {"Ready": "True"}),
        ("FetchFailed", {"Ready": "False", "Reconciling": "True"}),
        ("DependencyNotReady", {"Ready": "False", "Reconciling": "True"}),
        ("RenderFailed", {"Ready": "False", "Stalled": "True"}),
        ("HealthCheckFailed", {"Ready": "False", "Stalled": "True"}),
    ],
)
def test_conditions_follow_the_reason(reason: str | None, expected: dict[str, str]) -> None:
    status = sync_status(view(reason), generation=3, handled_at=None, previous=None, now=NOW)
    assert {c["type"]: c["status"] for c in status["conditions"]} == expected
    assert status["observedGeneration"] == 3


def test_an_unchanged_state_gives_an_equal_status_and_nothing_to_write() -> None:
    first = sync_status(
        view("ReconciliationSucceeded", "applied"),
        generation=1,
        handled_at="x",
        previous=None,
        now=NOW,
    )
    again = sync_status(
        view("ReconciliationSucceeded", "applied"),
        generation=1,
        handled_at="x",
        previous=first,
        now=LATER,
    )
    assert again == first
    assert not status_changed(first, again)
    failed = sync_status(
        view("ApplyFailed", "boom"), generation=1, handled_at="x", previous=first, now=LATER
    )
    assert status_changed(first, failed)
    assert failed["conditions"][0]["lastTransitionTime"] == LATER


def receiver(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "hooks", "namespace": "team"}, "spec": spec}


def test_a_receiver_resource_is_routed_by_its_derived_path_and_scoped_to_its_namespace() -> None:
    spec = receiver_from_resource(
        receiver(
            {
                "provider": "github",
                "secretRef": {"name": "t"},
                "syncs": ["shop"],
                "selector": {"matchLabels": {"tier": "web"}},
            }
        ),
        token="s3cret",
    )
    assert f"/hooks/{spec.name}" == webhook_path("hooks", "team", token="s3cret")
    assert spec.syncs == ("team.shop",)
    assert spec.selector == {"tier": "web"}
    mine = SyncSpec(
        name="team.x", source=GitSourceSpec(url="u"), labels={"tier": "web"}, namespace="team"
    )
    theirs = replace(mine, name="other.x", namespace="other")
    assert in_scope(spec, mine)
    assert not in_scope(spec, theirs)  # same labels, another namespace


def test_receiver_match_expressions_are_refused_not_ignored() -> None:
    selector = {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}
    with pytest.raises(ConfigError, match=r"spec.selector.matchExpressions: not supported"):
        receiver_from_resource(
            receiver({"provider": "github", "secretRef": {"name": "t"}, "selector": selector}),
            token="x",
        )


def test_a_suspended_sync_never_reconciled_is_not_said_to_be_in_progress() -> None:
    status = sync_status(
        view(None, suspended=True), generation=1, handled_at=None, previous=None, now=NOW
    )
    (ready,) = status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "Unknown", "Suspended")
