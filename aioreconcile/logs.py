"""Structured JSON logs (orjson): one object per line, with whatever ``extra`` the call gave
(sync, object, revision, trace ids), so every line can be filtered by source or object.

The formatter is the last line of defence for what reaches a log: every string (message,
extras, traceback) goes through ``engine.redaction.redact_text``, so a URL's userinfo or query
never reaches a line even when a caller forgot, and every character that is not printable
(U+0085, U+2028, U+202E, C1 controls) is written as a JSON ``\\uXXXX`` escape, so one record is
one line in every viewer and cannot reorder what follows it.
"""

import logging
import sys
import time
from typing import Any, Final

import orjson

from aioreconcile.engine.redaction import redact_text

_STANDARD: Final = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _redacted(value)
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        line = orjson.dumps(entry, default=str).decode()
        return line if line.isprintable() else "".join(map(_json_escaped, line))


def _redacted(value: object) -> object:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


def _json_escaped(char: str) -> str:
    """``char`` as JSON writes it when it is not printable: ``\\uXXXX`` (a surrogate pair past
    the BMP). orjson escapes C0 controls itself, not U+0085, U+2028 or U+202E."""
    if char.isprintable():
        return char
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
