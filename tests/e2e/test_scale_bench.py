"""``bench.scale`` at a small scale (5 syncs of 100 realistic objects), against the real apiserver,
a real ``git daemon`` and ``aioreconcile run`` as a child process: its invariants, not its
timings. Every sync applied, every edit and every object of a heal storm healed, every push
applied, and a push sent while a storm's heals were under way did not queue behind them."""

from pathlib import Path

import pytest

from aioreconcile.testing.pytest_plugin import Kube
from bench import scale

pytestmark = pytest.mark.integration


async def test_the_scale_benchmark_applies_heals_and_pushes_everything_at_a_small_scale(
    kube: Kube, tmp_path: Path
) -> None:
    args = scale.parser().parse_args(
        [
            *("--syncs", "5", "--objects", "100", "--changed", "20", "--edits", "20"),
            *("--storm", "100", "--storm-rounds", "2", "--push-rounds", "2"),
            *("--push-storm", "5", "--idle", "1", "--settle", "0.5", "--seed", "14"),
            *("--kubeconfig", str(kube.kubeconfig), "--apply-limit", "300"),
        ]
    )
    document = await scale.measure(kube.kubeconfig, args, tmp_path)

    row = document["rows"][0]
    assert row["syncs"] == 5
    assert row["objects"] == 500
    assert row["edits"] == 20
    assert row["unhealed"] == 0
    assert [s["unhealed"] for s in document["storms"]] == [0, 0]
    assert row["pushes_incomplete"] == 0
    assert len(document["pushes_idle"]) == 2
    assert len(document["push_storm"]) == 5
    for storm, push in zip(document["storms"], document["pushes_in_storm"], strict=True):
        assert storm["objects"] == 100
        # Each heal is its apply alone: no GET of what the watch event showed (the apiserver's
        # own count; the push's read of its inventory is one).
        assert storm["requests"].get("APPLY", 0.0) >= 100, storm["requests"]
        assert storm["requests"].get("GET", 0.0) < 10, storm["requests"]
        # The push went out while heals were due, and did not wait in the queue behind them.
        assert storm["heals_outstanding_at_writes_end"] > 0
        assert push["missing"] == 0
        assert push["queue_wait_ms"] is not None
        assert push["queue_wait_ms"] < 500 * storm["healed_after_writes_s"]
