"""The soak (``python -m bench.soak``) for about three minutes: pushes, drift, webhook bursts and a
mix of real faults against a real control plane, git daemon and ``aioreconcile run`` process.

Invariant, checked by the soak all along on the real apiserver: every pushed head is applied
and every drift healed after each fault; no object Git holds is deleted; no value goes back to
an older commit's; no forged or replayed delivery changes anything; the controller's open
descriptors stay flat.
"""

from pathlib import Path

import pytest

from bench.soak import broken, parser, rows, soak

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FD_BOUND = 10
# Seed 43 draws, in this order: controller kill -9, etcd SIGSTOP, git daemon kill -9, apiserver
# restart, connections reset, etcd compaction (the faults come from their own generator, so the
# seed alone decides them). The run is 1.5 minutes of cycles, plus 1.5 minutes of settled
# samples (31 s each, at the start, after the kill -9 and at the end).
SEED = 43


async def test_a_short_soak_of_pushes_drift_webhooks_and_faults_loses_nothing(
    tmp_path: Path,
) -> None:
    args = parser().parse_args(
        ["--minutes", "1.5", "--fd-bound", str(FD_BOUND), "--seed", str(SEED)]
    )
    report = await soak(args, tmp_path)
    for row in rows(report):
        print(f"SOAK {row['measure']}: {row['value']} {row['must']}")

    # It did what it says: pushes, drift, faults and every kind of delivery.
    assert report["pushes"] >= 10
    assert report["drift_edits"] >= 20
    assert report["faults"] >= 4
    outcomes = report["webhooks_by_outcome"]
    assert outcomes.get("forged 401 unauthorized", 0) >= 4
    assert outcomes.get("valid-again 200 duplicate", 0) >= 1
    assert outcomes.get("replay-new-id 202 accepted", 0) >= 1

    assert report["not_converged"] == []  # every head applied, every drift healed
    assert report["heads_applied_at_checkpoints"] >= report["faults"]
    assert report["objects_lost"] == 0
    assert report["wrongful_prunes"] == 0
    assert report["rollbacks"] == 0
    assert report["forged_effects"] == 0
    assert report["replay_effects"] == 0
    fds = report["fds"]
    assert fds["window_s"] >= 30  # one controller process, long enough to compare
    assert fds["end"] - fds["start"] <= FD_BOUND
    assert broken(report, args) == []
