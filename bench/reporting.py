"""Benchmarks print one JSON document (machine-readable) and then a table (for people)."""

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "memory": _proc_field("/proc/meminfo", "MemTotal"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _proc_field(path: str, key: str) -> str | None:
    """The first ``key: value`` of a /proc file (None off Linux)."""
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def emit(
    name: str, rows: Sequence[Mapping[str, Any]], *, extra: Mapping[str, Any] | None = None
) -> None:
    """Print ``{"benchmark", "machine", "rows", ...}`` as JSON, then the rows as a table."""
    document = {"benchmark": name, "machine": machine(), "rows": list(rows), **(extra or {})}
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n\n")
    if not rows:
        return
    columns = list(dict.fromkeys(c for row in rows for c in row))  # union, first-seen order
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.0f}"
    return "" if value is None else str(value)
