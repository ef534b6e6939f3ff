"""One rule for what may be shown of a URL, of free text and of a ref."""

import pytest

from aioreconcile.engine.redaction import (
    ambiguous_userinfo,
    printable,
    redact_text,
    redact_url,
    split_userinfo,
)

TOKEN = "ghp_s3cr3tT0ken"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://user:{TOKEN}@host/x.git", "https://host/x.git"),
        (f"https://{TOKEN}@host:8443/x.git", "https://host:8443/x.git"),
        (f"https://x-access-token:{TOKEN}@GitHub.com/acme/app", "https://GitHub.com/acme/app"),
        (f"https://host/x.git?private_token={TOKEN}", "https://host/x.git"),
        (f"https://host/x.git#{TOKEN}", "https://host/x.git"),
        (f"http://u:p%23{TOKEN}@host/x", "http://host/x"),
        (f"https://u:pa#{TOKEN}@host/x.git", "https://host/x.git"),
        (f"https://u:pa?{TOKEN}@host/x.git", "https://host/x.git"),
        (f"https://u:pa/{TOKEN}@host/x.git", "https://host/x.git"),
        (f"ssh://git:{TOKEN}@host/org/repo.git", "ssh://git@host/org/repo.git"),
        ("ssh://git@host:2222/org/repo.git", "ssh://git@host:2222/org/repo.git"),
        ("git@github.com:acme/deploy.git", "git@github.com:acme/deploy.git"),
        (f"git:{TOKEN}@github.com:acme/deploy.git", "git@github.com:acme/deploy.git"),
        ("git://127.0.0.1:9418/app.git", "git://127.0.0.1:9418/app.git"),
        ("/srv/git/deploy.git", "/srv/git/deploy.git"),
        (f"https://[::1:{TOKEN}@host/x", "https://***@host/x"),
    ],
)
def test_redact_url_shows_no_credential(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert TOKEN not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "clean", "username", "password"),
    [
        (
            "https://bot:p%40ss@git.example.com/r.git",
            "https://git.example.com/r.git",
            "bot",
            "p@ss",
        ),
        ("https://bot:a%23b%3Fc%2Fd@host/r.git?x=1", "https://host/r.git?x=1", "bot", "a#b?c/d"),
        ("https://tok@host/r.git", "https://host/r.git", "tok", None),
        ("ssh://git@host/r.git", "ssh://git@host/r.git", None, None),
        ("git@host:org/r.git", "git@host:org/r.git", None, None),
        ("https://host/r.git", "https://host/r.git", None, None),
    ],
)
def test_split_userinfo_decodes_the_credentials_git_will_be_given(
    url: str, clean: str, username: str | None, password: str | None
) -> None:
    split = split_userinfo(url)
    assert (split.url, split.username, split.password) == (clean, username, password)
    assert "p@ss" not in repr(split)


@pytest.mark.parametrize(
    ("url", "ambiguous"),
    [
        ("https://u:pa#ss@host/x", True),
        ("https://u:pa?ss@host/x", True),
        ("https://u:pa/ss@host/x", True),
        ("https://u:pa%23ss@host/x", False),
        ("https://host/org/repo@v2", False),
        ("https://host/x", False),
        ("git@host:org/x", False),
    ],
)
def test_a_password_with_a_reserved_character_is_recognised(url: str, ambiguous: bool) -> None:
    assert ambiguous_userinfo(url) is ambiguous


def test_redact_text_removes_userinfo_and_known_values() -> None:
    text = "fetch http://u:p4ss@h/x.git failed; ssh://git@h/y; token=abc123def; abc"
    assert redact_text(text, ("abc123def", "")) == (
        "fetch http://***@h/x.git failed; ssh://***@h/y; token=***; abc"
    )
    assert redact_text("x abcdef y", ("abc", "abcdef")) == "x *** y"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("refs/heads/main", "refs/heads/main"),
        ("refs/heads/caf\u00e9", "refs/heads/caf\u00e9"),
        ("refs/heads/a\nfake log line", "refs/heads/a\\x0afake log line"),
        ("refs/heads/a\u0085b", "refs/heads/a\\x85b"),
        ("refs/heads/a\u2028b\u2029c", "refs/heads/a\\u2028b\\u2029c"),
        ("refs/heads/\u202eniam", "refs/heads/\\u202eniam"),
        ("refs/heads/\x1b[31mred", "refs/heads/\\x1b[31mred"),
        ("refs/heads/\x9bx", "refs/heads/\\x9bx"),
        ("a\\x0ab", "a\\\\x0ab"),
    ],
)
def test_printable_escapes_control_and_bidi_characters(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(text).isprintable()
