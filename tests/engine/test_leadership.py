"""Leader election decisions: expiry on the local clock, who may take the Lease, what is written."""

from datetime import UTC, datetime

import pytest

from aioreconcile.engine.configuration import duration_seconds
from aioreconcile.engine.leadership import (
    LeaseRecord,
    LeaseTimings,
    Observed,
    acquire_delay,
    claim,
    expired,
    held_by_other,
    micro_time,
    must_step_down,
    observe,
    released,
)

TIMINGS = LeaseTimings(lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)
WALL = datetime(2026, 12, 1, 6, 0, 0, 123456, tzinfo=UTC)
STAMP = "2026-12-01T06:00:00.123456Z"
OTHER = LeaseRecord("b", 15, "2026-11-30T00:00:00.000000Z", "2099-01-01T00:00:00.000000Z", 4)


def test_micro_time_is_rfc3339_with_microseconds_in_utc() -> None:
    assert micro_time(WALL) == STAMP


@pytest.mark.parametrize(
    ("since", "now", "duration", "is_expired"),
    [
        (100.0, 100.0, 15, False),
        (100.0, 114.9, 15, False),
        (100.0, 115.0, 15, True),
        (100.0, 101.0, 1, True),  # a released Lease says 1 s
        (100.0, 100.0, 0, True),  # no duration: nothing to wait for
    ],
)
def test_expiry_is_judged_by_local_time_since_the_record_last_changed(
    since: float, now: float, duration: int, is_expired: bool
) -> None:
    observed = Observed(LeaseRecord("b", duration), "1", since=since)
    assert expired(observed, now=now) is is_expired


def test_remote_timestamps_never_decide_expiry() -> None:
    """A renewTime far in the future (a skewed clock) or far in the past changes nothing."""
    future = Observed(OTHER, "1", since=0.0)
    assert expired(future, now=15.0)
    past = Observed(LeaseRecord("b", 15, renew_time="1970-01-01T00:00:00.000000Z"), "1", since=0.0)
    assert not expired(past, now=14.0)


def test_observing_the_same_record_keeps_its_clock_and_a_change_restarts_it() -> None:
    first = observe(None, OTHER, "1", now=10.0)
    same = observe(first, OTHER, "2", now=20.0)
    renewed = observe(same, LeaseRecord(**{**OTHER.__dict__, "renew_time": "x"}), "3", now=21.0)

    assert (first.since, same.since, renewed.since) == (10.0, 10.0, 21.0)
    assert same.resource_version == "2"


@pytest.mark.parametrize(
    ("observed", "now", "blocked"),
    [
        (None, 0.0, False),
        (Observed(OTHER, "1", since=0.0), 14.0, True),
        (Observed(OTHER, "1", since=0.0), 15.0, False),
        (Observed(LeaseRecord("", 1), "1", since=0.0), 0.0, False),  # released
        (Observed(LeaseRecord("a", 15), "1", since=0.0), 1.0, False),  # ours
    ],
)
def test_only_another_holders_valid_lease_blocks_us(
    observed: Observed | None, now: float, blocked: bool
) -> None:
    assert held_by_other(observed, identity="a", now=now) is blocked
    record = claim(observed, identity="a", timings=TIMINGS, now=now, wall=WALL)
    assert (record is None) is blocked


def test_creating_the_lease_writes_us_with_no_transition() -> None:
    assert claim(None, identity="a", timings=TIMINGS, now=0.0, wall=WALL) == LeaseRecord(
        "a", 15, STAMP, STAMP, 0
    )


def test_taking_an_expired_lease_counts_a_transition_and_restarts_acquire_time() -> None:
    record = claim(
        Observed(OTHER, "1", since=0.0), identity="a", timings=TIMINGS, now=16.0, wall=WALL
    )
    assert record == LeaseRecord("a", 15, STAMP, STAMP, 5)


def test_renewing_keeps_acquire_time_and_transitions() -> None:
    ours = LeaseRecord("a", 15, "2026-12-01T05:00:00.000000Z", "2026-12-01T05:59:58.000000Z", 3)
    record = claim(
        Observed(ours, "9", since=0.0), identity="a", timings=TIMINGS, now=1.0, wall=WALL
    )
    assert record == LeaseRecord("a", 15, "2026-12-01T05:00:00.000000Z", STAMP, 3)


def test_release_empties_the_holder_with_a_one_second_duration_only_if_ours() -> None:
    ours = Observed(LeaseRecord("a", 15, "t0", "t1", 3), "9", since=0.0)
    assert released(ours, identity="a", wall=WALL) == LeaseRecord("", 1, STAMP, STAMP, 3)
    assert released(Observed(OTHER, "9", since=0.0), identity="a", wall=WALL) is None
    assert released(None, identity="a", wall=WALL) is None


@pytest.mark.parametrize(
    ("last", "now", "step_down"), [(0.0, 9.99, False), (0.0, 10.0, True), (5.0, 14.0, False)]
)
def test_a_leader_steps_down_at_the_renew_deadline(
    last: float, now: float, step_down: bool
) -> None:
    assert must_step_down(last, timings=TIMINGS, now=now) is step_down


def test_acquire_retries_are_jittered_up_by_at_most_twenty_percent() -> None:
    assert acquire_delay(TIMINGS, random=0.0) == 2.0
    assert acquire_delay(TIMINGS, random=1.0) == pytest.approx(2.4)


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "message"),
    [
        (10, 10.0, 2.0, "longer than the renew"),
        (15, 2.0, 2.0, "1.2 x the retry period"),
        (0, 1.0, 0.5, "positive"),
        (3, 2.0, 0.5, None),  # the tuned timings of the failover test
        (15, 10.0, 2.0, None),
    ],
)
def test_timings_follow_client_gos_rules(
    lease: int, renew: float, retry: float, message: str | None
) -> None:
    if message is None:
        LeaseTimings(lease, renew, retry)
        return
    with pytest.raises(ValueError, match=message):
        LeaseTimings(lease, renew, retry)


def test_a_lease_object_reads_into_a_record_and_back() -> None:
    lease = {
        "spec": {
            "holderIdentity": "a",
            "leaseDurationSeconds": 15,
            "acquireTime": "t0",
            "renewTime": "t1",
            "leaseTransitions": 2,
        }
    }
    record = LeaseRecord.of_lease(lease)
    assert record == LeaseRecord("a", 15, "t0", "t1", 2)
    assert record.spec() == lease["spec"]
    assert LeaseRecord.of_lease({}) == LeaseRecord()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15.0), ("0.5s", 0.5), ("2", 2.0), ("1m30s", 90.0), ("soon", None), ("nan", None)],
)
def test_duration_flags_read_as_the_config_reads_durations(
    text: str, seconds: float | None
) -> None:
    assert duration_seconds(text) == seconds
