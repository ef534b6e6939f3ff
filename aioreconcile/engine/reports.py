"""Views of a SyncOutcome for people (a table) and programs (JSON-able data)."""

from typing import Any

from aioreconcile.engine.changeset import Action, ChangeSetEntry
from aioreconcile.engine.outcomes import SyncOutcome


def _entry_row(entry: ChangeSetEntry) -> dict[str, Any]:
    ref = entry.ref
    return {
        "apiVersion": ref.api_version,
        "kind": ref.kind,
        "namespace": ref.namespace,
        "name": ref.name,
        "action": entry.action.value,
        "error": entry.error,
        "durationMs": round(entry.duration_s * 1000, 1),
        "resourceVersionBefore": entry.resource_version_before,
        "resourceVersionAfter": entry.resource_version_after,
    }


def as_json(outcome: SyncOutcome) -> dict[str, Any]:
    """Stable, documented shape: ``entries`` lists every object with at least kind, namespace,
    name and action; ``totals`` counts each action."""
    return {
        "revision": outcome.revision,
        "reason": outcome.reason.value,
        "message": outcome.message,
        "entries": [_entry_row(e) for e in outcome.changeset.entries],
        "totals": {a.value: n for a, n in outcome.changeset.totals().items()},
        "pruneNote": outcome.prune_note,
        "notReady": [
            {
                "kind": ref.kind,
                "namespace": ref.namespace,
                "name": ref.name,
                "status": h.status.value,
                "message": h.message,
            }
            for ref, h in outcome.not_ready
        ],
        "inventorySize": outcome.inventory_size,
    }


def as_table(outcome: SyncOutcome, *, dry_run: bool = False) -> str:
    """One line per object, then a summary line, then what needs attention."""
    header = ("KIND", "NAMESPACE", "NAME", "ACTION", "MS")
    rows = [
        (
            e.ref.kind,
            e.ref.namespace or "-",
            e.ref.name,
            e.action.value + (" (dry run)" if dry_run and e.action is not Action.FAILED else ""),
            f"{e.duration_s * 1000:.0f}",
        )
        for e in outcome.changeset.entries
    ]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    totals = outcome.changeset.totals()
    summary = ", ".join(f"{n} {a.value}" for a, n in totals.items() if n)
    lines.append("")
    lines.append(
        f"{outcome.reason.value}: {outcome.message}" + (f" ({summary})" if summary else "")
    )
    for entry in outcome.changeset.entries:
        if entry.action is Action.FAILED:
            lines.append(f"  failed {entry.ref}: {entry.error}")
    if outcome.prune_note and outcome.prune_note != "prune not requested":
        lines.append(f"  prune skipped: {outcome.prune_note}")
    for ref, h in outcome.not_ready:
        lines.append(f"  not ready {ref}: {h.status.value}: {h.message}")
    return "\n".join(lines)
