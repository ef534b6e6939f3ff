"""``aioreconcile diff``: a unified diff per object between the live object and what our apply
would store (the server-side dry-run), with noise removed and Secret values masked."""

import difflib

import yaml

from aioreconcile.engine.model import JsonObject, ObjectRef
from aioreconcile.engine.planning import mask_secret, strip_for_diff


def _as_yaml(obj: JsonObject | None) -> list[str]:
    if obj is None:
        return []
    text = yaml.safe_dump(
        mask_secret(strip_for_diff(obj)), sort_keys=True, default_flow_style=False
    )
    return text.splitlines(keepends=True)


def unified_diff(ref: ObjectRef, live: JsonObject | None, merged: JsonObject | None) -> str:
    """Empty when applying would change nothing we show; else a ``diff -u`` of the two.
    ``merged`` None: the object would be deleted (pruned)."""
    before, after = _as_yaml(live), _as_yaml(merged)
    if before == after:
        return ""
    return "".join(
        difflib.unified_diff(
            before,
            after,
            fromfile=f"live/{ref}" if live is not None else "/dev/null",
            tofile=f"merged/{ref}" if merged is not None else "/dev/null",
        )
    )
