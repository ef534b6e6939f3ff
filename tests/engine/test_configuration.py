"""The standalone configuration: every field read, every mistake named with path and file."""

import json
import textwrap

import pytest

from aioreconcile.engine.config import AuthKind, Provider, VerifyMode
from aioreconcile.engine.configuration import ConfigError, parse_config
from aioreconcile.engine.sources import RenderType

FULL = """\
syncs:
  - name: shop
    source:
      url: https://git.example.com/org/shop.git
      ref: release
      path: deploy/prod
      interval: 1m30s
      timeout: 20s
      auth: {username: bot, passwordEnv: SHOP_TOKEN}
      verify: {mode: ssh, allowedSignersFile: /etc/aioreconcile/allowed_signers}
    render:
      type: helm
      releaseName: shop
      values: {replicas: 3}
      valuesFiles: [values-prod.yaml]
    targetNamespace: shop
    labels: {team: shop, tier: web}
    prune: false
    selfHeal: false
  - name: infra
    source:
      url: git@git.example.com:org/infra.git
      auth: {sshKeyFile: /keys/id, knownHostsFile: /keys/known_hosts}
receivers:
  - name: github
    provider: github
    secretEnv: GITHUB_WEBHOOK_SECRET
    syncs: [infra]
    selector:
      matchLabels: {team: shop}
"""


def test_full_configuration_is_read_into_specs() -> None:
    config = parse_config(FULL, origin="config.yaml")

    shop, infra = config.syncs
    assert shop.name == "shop"
    assert (shop.source.ref, shop.source.path) == ("release", "deploy/prod")
    assert (shop.source.interval_s, shop.source.timeout_s) == (90.0, 20.0)
    assert shop.source.auth.kind is AuthKind.BASIC
    assert (shop.source.auth.username, shop.source.auth.password_env) == ("bot", "SHOP_TOKEN")
    assert shop.source.verify.mode is VerifyMode.SSH
    assert shop.render.type is RenderType.HELM
    assert shop.render.values == {"replicas": 3}
    assert shop.render.namespace == shop.target_namespace == "shop"
    assert (shop.prune, shop.self_heal, shop.suspend) == (False, False, False)
    assert infra.source.ref == "main"
    assert infra.source.interval_s == 300.0
    assert infra.source.auth.kind is AuthKind.SSH
    assert infra.prune is True
    (receiver,) = config.receivers
    assert receiver.provider is Provider.GITHUB
    assert receiver.max_body_bytes == 5 * 1024 * 1024
    assert receiver.syncs == ("infra",)
    assert receiver.selector == {"team": "shop"}
    assert shop.labels == {"team": "shop", "tier": "web"}
    assert infra.labels == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "syncs:\n  - name: a\n", "config.yaml: syncs[0].source: required", id="source-missing"
        ),
        pytest.param(
            "syncs:\n  - name: a\n    source: {ref: main}\n",
            "config.yaml: syncs[0].source.url: required",
            id="url-missing",
        ),
        pytest.param(
            "syncs:\n  - name: a\n    source: {url: u}\n    prnue: true\n",
            "config.yaml: syncs[0].prnue: unknown field",
            id="typo-is-an-error",
        ),
        pytest.param(
            "syncs:\n  - name: Shop_1\n    source: {url: u}\n",
            "config.yaml: syncs[0].name: 'Shop_1' must be a DNS label",
            id="name-not-dns-label",
        ),
        pytest.param(
            "syncs:\n  - name: a\n    source: {url: u, interval: soon}\n",
            "config.yaml: syncs[0].source.interval: 'soon' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            "syncs:\n  - name: a\n    source: {url: u, path: ../other}\n",
            "config.yaml: syncs[0].source.path: must stay inside the repository",
            id="path-escapes",
        ),
        pytest.param(
            "syncs:\n  - name: a\n    source: {url: u}\n    prune: yes-please\n",
            "config.yaml: syncs[0].prune: must be bool, not str",
            id="bool-typed",
        ),
        pytest.param(
            "syncs:\n  - name: a\n    source: {url: u}\n  - name: a\n    source: {url: v}\n",
            "config.yaml: syncs[1].name: 'a' is already used by syncs[0]",
            id="duplicate-sync",
        ),
        pytest.param(
            "syncs:\n  - name: a\n    source: {url: u, auth: {sshKeyFile: /k}}\n",
            "config.yaml: syncs[0].source.auth.knownHostsFile: required with sshKeyFile",
            id="ssh-needs-known-hosts",
        ),
        pytest.param(
            "syncs:\n  - name: a\n    source: {url: u, verify: {mode: gpg}}\n",
            "config.yaml: syncs[0].source.verify.keyringFile: required with mode gpg",
            id="gpg-needs-keyring",
        ),
        pytest.param(
            "receivers:\n  - name: gh\n    provider: github\n",
            "config.yaml: receivers[0]: a secret is mandatory",
            id="receiver-secret-mandatory",
        ),
        pytest.param(
            "receivers:\n  - name: gh\n    provider: githab\n    secretEnv: S\n",
            "config.yaml: receivers[0].provider: 'githab' is not one of the allowed values",
            id="unknown-provider",
        ),
        pytest.param(
            "receivers:\n  - name: gh\n    provider: github\n    secretEnv: S\n",
            "config.yaml: receivers[0]: names no syncs: set syncs: [names] or selector.matchLabels",
            id="receiver-without-scope",
        ),
        pytest.param(
            "receivers:\n  - {name: gh, provider: github, secretEnv: S, syncs: [nope]}\n",
            "config.yaml: receivers[0].syncs[0]: no sync is named 'nope'",
            id="receiver-names-an-unknown-sync",
        ),
        pytest.param(
            "receivers:\n  - {name: gh, provider: github, secretEnv: S,"
            " selector: {matchLabels: {}}}\n",
            "config.yaml: receivers[0].selector.matchLabels: must name at least one label",
            id="receiver-empty-selector",
        ),
        pytest.param(
            "receivers:\n  - {name: gh, provider: github, secretEnv: S,"
            " selector: {matchExpressions: []}}\n",
            "config.yaml: receivers[0].selector.matchExpressions: unknown field",
            id="receiver-selector-expressions",
        ),
        pytest.param(
            "syncs:\n  - {name: a, source: {url: u}, labels: {team: [x]}}\n",
            "config.yaml: syncs[0].labels.team: must be str",
            id="label-not-a-string",
        ),
        pytest.param(
            "syncs:\n  - {name: a, source: {url: u}, labels: {'bad key!': x}}\n",
            "config.yaml: syncs[0].labels: 'bad key!' is not a valid label key",
            id="label-bad-key",
        ),
        pytest.param("syncs: [\n", "config.yaml: line 2: not valid YAML", id="broken-yaml"),
        pytest.param(
            "- a\n- b\n", "config.yaml: : must be a mapping, not list", id="top-level-list"
        ),
    ],
)
def test_each_mistake_names_the_file_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), origin="config.yaml")

    assert any(line.startswith(expected) for line in str(caught.value).splitlines()), str(
        caught.value
    )


def test_all_problems_are_reported_at_once() -> None:
    text = (
        "syncs:\n  - name: a\n  - source: {url: u}\nreceivers:\n  - name: r\n    provider: gitlab\n"
    )

    with pytest.raises(ConfigError) as caught:
        parse_config(text, origin="c.yaml")

    assert len(caught.value.problems) >= 3


def test_empty_file_is_an_empty_configuration() -> None:
    assert parse_config("", origin="c.yaml").syncs == ()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "--upload-pack=touch /tmp/x", "must not start with '-'", id="option-upload-pack"
        ),
        pytest.param("-oProxyCommand=sh", "must not start with '-'", id="option-short"),
        pytest.param("ssh://-oProxyCommand=sh/x", "host must not start with '-'", id="ssh-host"),
        pytest.param("-host:org/repo", "must not start with '-'", id="scp-host-option"),
        pytest.param("ext::sh -c touch% /tmp/x", "remote helper", id="ext-transport"),
        pytest.param("fd::17", "remote helper", id="fd-transport"),
        pytest.param("https://host/a b.git", "whitespace or control", id="space"),
        pytest.param("https://host/a\tb.git", "whitespace or control", id="tab"),
        pytest.param("https://host/a\u0085b.git", "whitespace or control", id="c1-nel"),
        pytest.param("https://host/\u202eb.git", "whitespace or control", id="bidi"),
        pytest.param("gopher://host/x.git", "scheme 'gopher' is not supported", id="scheme"),
        pytest.param(
            "https://bot:pa#ss@host/x.git",
            "the password in the URL holds '#', '?' or '/': percent-encode it",
            id="password-hash",
        ),
        pytest.param(
            "https://bot:pa?ss@host/x.git", "percent-encode it", id="password-question-mark"
        ),
        pytest.param("https://bot:pa/ss@host/x.git", "percent-encode it", id="password-slash"),
    ],
)
def test_a_url_git_would_misread_is_refused_naming_the_field(url: str, expected: str) -> None:
    text = "syncs:\n  - name: a\n    source:\n      url: " + _yaml_string(url) + "\n"

    with pytest.raises(ConfigError) as caught:
        parse_config(text, origin="config.yaml")

    (problem,) = caught.value.problems
    assert problem.startswith("syncs[0].source.url: "), problem
    assert expected in problem
    assert str(caught.value).startswith("config.yaml: syncs[0].source.url: ")
    assert not any(password in problem for password in ("pa#ss", "pa?ss", "pa/ss"))


def _yaml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/org/shop.git",
        "https://bot:pa%23s%3Fs%2F@git.example.com/org/shop.git",
        "http://127.0.0.1:8080/shop.git",
        "ssh://git@git.example.com:2222/org/shop.git",
        "git@github.com:org/shop.git",
        "git://127.0.0.1:9418/shop.git",
        "file:///srv/git/shop.git",
        "/srv/git/shop.git",
        "https://host/org/repo@v2.git",
    ],
)
def test_the_url_forms_git_takes_are_accepted(url: str) -> None:
    text = "syncs:\n  - name: a\n    source:\n      url: " + _yaml_string(url) + "\n"

    (sync,) = parse_config(text, origin="config.yaml").syncs

    assert sync.source.url == url


@pytest.mark.parametrize("ref", ["ma\u202ein", "main\u2028x", "a\u0085b", "a\tb", "a\x1bb"])
def test_a_ref_with_control_characters_is_refused(ref: str) -> None:
    text = f"syncs:\n  - name: a\n    source: {{url: u, ref: {_yaml_string(ref)}}}\n"

    with pytest.raises(ConfigError) as caught:
        parse_config(text, origin="config.yaml")

    assert caught.value.problems == [
        "syncs[0].source.ref: must not contain whitespace or control characters"
    ]


def test_a_mistyped_url_line_is_named_without_its_credential() -> None:
    """Found by fuzz.config: ``{url:https://...}`` (no space after the colon) is one unknown
    key holding the whole URL, and the message quoted it, password and all."""
    text = "syncs:\n  - name: a\n    source: {url:https://bot:s3cret@git.example.com/x.git}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, origin="config.yaml")
    message = str(caught.value)
    assert "s3cret" not in message
    assert "config.yaml: syncs[0].source.url:https://***@git.example.com/x.git: unknown" in message


@pytest.mark.parametrize("text", ["[" * 100_000, "syncs: " + "[" * 5_000 + "]" * 5_000])
def test_a_configuration_nested_too_deeply_is_a_config_error(text: str) -> None:
    """Found while writing fuzz.config: PyYAML's RecursionError escaped parse_config."""
    with pytest.raises(ConfigError, match=r"^config\.yaml: line 1: nested too deeply"):
        parse_config(text, origin="config.yaml")
