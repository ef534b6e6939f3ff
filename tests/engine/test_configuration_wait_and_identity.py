"""A sync's health wait (``wait``/``timeout``) and its identity (``serviceAccount``) in the
standalone configuration: read into the spec, every mistake named with its field and file."""

import pytest

from aioreconcile.engine.config import ServiceAccountRef
from aioreconcile.engine.configuration import ConfigError, parse_config, service_account_ref


def sync(extra: str) -> str:
    return f"syncs:\n  - name: a\n    source: {{url: u, timeout: 20s}}\n{extra}"


def test_wait_and_its_timeout_are_read_apart_from_the_git_timeout() -> None:
    (spec,) = parse_config(sync("    wait: true\n    timeout: 2m\n"), origin="c.yaml").syncs

    assert (spec.wait, spec.wait_timeout_s) == (True, 120.0)
    assert spec.source.timeout_s == 20.0


def test_no_wait_by_default() -> None:
    (spec,) = parse_config(sync(""), origin="c.yaml").syncs

    assert (spec.wait, spec.wait_timeout_s, spec.service_account) == (False, 300.0, None)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            "    targetNamespace: shop\n    serviceAccount: deployer\n",
            ServiceAccountRef("shop", "deployer"),
            id="bare-name-in-target-namespace",
        ),
        pytest.param(
            "    targetNamespace: shop\n    serviceAccount: tenants/deployer\n",
            ServiceAccountRef("tenants", "deployer"),
            id="explicit-namespace-wins",
        ),
        pytest.param(
            "    serviceAccount: tenants/deploy.bot\n",
            ServiceAccountRef("tenants", "deploy.bot"),
            id="explicit-without-target-namespace",
        ),
    ],
)
def test_service_account_resolves_to_one_namespace(extra: str, expected: ServiceAccountRef) -> None:
    (spec,) = parse_config(sync(extra), origin="c.yaml").syncs

    assert spec.service_account == expected


def test_impersonated_identity_is_the_service_accounts_user_and_groups() -> None:
    account = ServiceAccountRef("shop", "deployer")

    assert account.user == "system:serviceaccount:shop:deployer"
    assert account.groups == (
        "system:serviceaccounts",
        "system:serviceaccounts:shop",
        "system:authenticated",
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            "    serviceAccount: deployer\n",
            "c.yaml: syncs[0].serviceAccount: 'deployer' names no namespace and the sync has no "
            "targetNamespace",
            id="ambiguous-bare-name",
        ),
        pytest.param(
            "    serviceAccount: system:serviceaccount:shop:deployer\n",
            "c.yaml: syncs[0].serviceAccount: 'system:serviceaccount:shop:deployer': give "
            "namespace/name",
            id="user-name-form",
        ),
        pytest.param(
            "    serviceAccount: a/b/c\n",
            "c.yaml: syncs[0].serviceAccount: 'a/b/c': namespace 'a/b' is not a DNS label",
            id="two-slashes",
        ),
        pytest.param(
            "    serviceAccount: shop/\n",
            "c.yaml: syncs[0].serviceAccount: 'shop/': name '' is not a valid",
            id="empty-name",
        ),
        pytest.param(
            "    serviceAccount: Shop/deployer\n",
            "c.yaml: syncs[0].serviceAccount: 'Shop/deployer': namespace 'Shop' is not a DNS",
            id="namespace-not-dns-label",
        ),
        pytest.param(
            "    serviceAccount: 42\n",
            "c.yaml: syncs[0].serviceAccount: must be str, not int",
            id="not-a-string",
        ),
        pytest.param(
            "    timeout: 2m\n",
            "c.yaml: syncs[0].timeout: only used with wait: true",
            id="timeout-without-wait",
        ),
        pytest.param(
            "    wait: true\n    timeout: never\n",
            "c.yaml: syncs[0].timeout: 'never' is not a duration",
            id="bad-timeout",
        ),
        pytest.param(
            "    wait: 'yes'\n",
            "c.yaml: syncs[0].wait: must be bool, not str",
            id="wait-typed",
        ),
    ],
)
def test_each_mistake_names_the_file_and_field(extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(sync(extra), origin="c.yaml")

    assert any(line.startswith(expected) for line in str(caught.value).splitlines()), str(
        caught.value
    )


def test_service_account_ref_is_usable_without_a_file() -> None:
    """The one rule, for callers with their own default namespace (a Sync resource's)."""
    assert service_account_ref("ci", default_namespace="team") == ServiceAccountRef("team", "ci")
    with pytest.raises(ValueError, match="names no namespace"):
        service_account_ref("ci", default_namespace=None)
