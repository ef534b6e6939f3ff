"""What may be shown of a URL or of free text: one rule, used by status, logs, errors, spans and
CLI output alike.

A source URL may carry a token (``https://x-access-token:ghp_...@github.com/org/repo``, or
``?private_token=`` as GitLab allows). Everything that shows a URL goes through
:func:`redact_url`; free text that may quote one (git's stderr, an exception) goes through
:func:`redact_text`. Refs and other strings that come from the outside go through
:func:`printable` before they are printed, so a ref cannot forge a log line or turn a terminal
around (U+202E) - Argo CD and Flux both refuse control characters in refs for the same reason.

Pure: no I/O, never raises.
"""

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED: Final = "***"
SSH_SCHEMES: Final = frozenset({"ssh", "git+ssh", "ssh+git"})
_USERINFO_IN_TEXT: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")
_QUERY_IN_TEXT: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s'\"?#]*)[?#][^\s'\"]*")
_SCP_LIKE: Final = re.compile(r"(?P<user>[^@/:\s]+)(?P<password>:[^@/\s]*)?@(?P<rest>[^/:\s]+:.*)")


@dataclass(frozen=True)
class SplitUrl:
    """A URL without its userinfo, and what the userinfo held (decoded; never in a repr).

    ``url`` is what git is given: the path and query are left as written. An SSH URL keeps its
    user (``ssh://git@host/repo``: the account is part of the address and not a secret).
    """

    url: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def split_userinfo(url: str) -> SplitUrl:
    """``url`` without ``user:password@`` (percent-decoded into the fields); scp-like SSH
    addresses and ``ssh://`` URLs keep their user and lose only a password."""
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return SplitUrl(redact_text(text))
    if not parts.scheme or "@" not in parts.netloc:
        if scp := _SCP_LIKE.fullmatch(text):
            return SplitUrl(f"{scp['user']}@{scp['rest']}")
        return SplitUrl(text)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    username, has_password, password = userinfo.partition(":")
    if parts.scheme.lower() in SSH_SCHEMES:
        return SplitUrl(urlunsplit(parts._replace(netloc=f"{username}@{hostport}")))
    return SplitUrl(
        urlunsplit(parts._replace(netloc=hostport)),
        username=unquote(username) or None,
        password=unquote(password) if has_password else None,
    )


def ambiguous_userinfo(url: str) -> bool:
    """Whether ``url`` looks like ``scheme://user:pa#ss@host/...``: a password holding ``#``,
    ``?`` or ``/`` unencoded, which every URL parser (and git) cuts at that character, so the
    host would be taken from the password. Such a URL must be percent-encoded to be usable."""
    _, sep, rest = url.strip().partition("://")
    if not sep or "@" not in rest:
        return False
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return "@" not in authority and ":" in authority and bool(re.search(r"[/?#]", rest))


def redact_url(url: str) -> str:
    """The URL as it may be shown: no password or token anywhere in it.

    ``https://user:token@host/x.git?private_token=t#f`` -> ``https://host/x.git``: userinfo,
    query and fragment go (tokens hide in all three). ``ssh://git@host/x`` and
    ``git@host:org/x`` keep their user, which names an account, not a secret. A password with
    an unencoded ``#``, ``?`` or ``/`` (see :func:`ambiguous_userinfo`) is cut at the last ``@``.
    """
    text = url.strip()
    if ambiguous_userinfo(text):
        scheme, _, rest = text.partition("://")
        text = f"{scheme}://{rest.rpartition('@')[2]}"
    clean = split_userinfo(text).url
    try:
        parts = urlsplit(clean)
    except ValueError:
        return redact_text(clean)
    if parts.scheme and parts.netloc:
        return urlunsplit(parts._replace(query="", fragment=""))
    return clean


def redact_text(text: str, secrets: Collection[str] = ()) -> str:
    """Free text (git's stderr, an error message) with every ``scheme://userinfo@`` replaced by
    ``scheme://***@``, the query and fragment of every URL by ``?***``, and every known secret
    value by ``***`` (longest first, so a secret that contains another is not half shown).

    Both patterns need ``://``: text without it (most of every log line: object names, syncs,
    field paths) skips them, which halves the cost of a JSON log line."""
    if "://" in text:
        text = _USERINFO_IN_TEXT.sub(lambda m: f"{m[1]}{REDACTED}@", text)
        text = _QUERY_IN_TEXT.sub(lambda m: f"{m[1]}?{REDACTED}", text)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def printable(text: str) -> str:
    """``text`` with every control, format, line or paragraph separator character escaped
    (``\\x1b``, ``\\u2028``, ``\\u202e``...), so it prints on one line as it is and cannot
    reorder or fake what follows it. Backslashes are doubled so the escape is unambiguous."""
    if text.isprintable() and "\\" not in text:
        return text
    out: list[str] = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable():  # False for Cc, Cf, Zl, Zp, Zs but the space, surrogates
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)
