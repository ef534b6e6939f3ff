"""The JSON log lines of ``aioreconcile run``: whatever a caller passes, no credential is
written."""

import logging

import orjson

from aioreconcile.logs import JsonFormatter

TOKEN = "ghp_l0g-t0ken-n0where"


def test_a_log_line_never_carries_a_url_token() -> None:
    record = logging.LogRecord(
        "aioreconcile.reactor",
        logging.WARNING,
        __file__,
        1,
        "fetch from %s failed: %s",
        (
            f"https://x-access-token:{TOKEN}@github.com/acme/app.git",
            f"fatal: unable to access 'https://github.com/acme/app.git?private_token={TOKEN}'",
        ),
        None,
    )
    record.url = f"https://bot:{TOKEN}@github.com/acme/app.git"
    record.errors = [f"ssh://git:{TOKEN}@host/x"]

    line = JsonFormatter().format(record)

    assert TOKEN not in line
    entry = orjson.loads(line)
    assert "https://***@github.com/acme/app.git" in entry["message"]
    assert entry["url"] == "https://***@github.com/acme/app.git"


def test_a_log_line_holds_no_raw_line_separator_or_bidi_control() -> None:
    message = "ref refs/heads/a\u2028b\u202ec\u0085d\x9b"
    record = logging.LogRecord("aioreconcile", logging.INFO, __file__, 1, message, (), None)
    record.ref = "refs/heads/x\u0085y\u2029"

    line = JsonFormatter().format(record)

    assert line.isprintable()
    entry = orjson.loads(line)
    assert (entry["message"], entry["ref"]) == (message, "refs/heads/x\u0085y\u2029")
