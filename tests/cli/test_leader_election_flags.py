"""`run --leader-elect` flags: off by default, client-go's defaults, bad timings refused."""

import pytest

from aioreconcile import cli
from aioreconcile.engine.leadership import LeaseTimings
from aioreconcile.runtime import LeaderElectionSettings


def _settings(*flags: str) -> object:
    args = cli._parser().parse_args(["run", "--config", "c.yaml", *flags])
    return cli._leader_election(args)


def test_leader_election_is_off_unless_asked_for() -> None:
    assert _settings() is None


def test_defaults_are_client_gos_and_the_namespace_is_left_to_the_pod() -> None:
    settings = _settings("--leader-elect")
    assert settings == LeaderElectionSettings(
        namespace=None, name="aioreconcile", identity="", timings=LeaseTimings(15, 10.0, 2.0)
    )


def test_tuned_timings_and_names_are_taken() -> None:
    settings = _settings(
        "--leader-elect",
        "--leader-election-id=shop",
        "--leader-election-namespace=ops",
        "--leader-election-identity=pod-a",
        "--leader-election-lease-duration=3s",
        "--leader-election-renew-deadline=2",
        "--leader-election-retry-period=0.5s",
    )
    assert settings == LeaderElectionSettings(
        namespace="ops", name="shop", identity="pod-a", timings=LeaseTimings(3, 2.0, 0.5)
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--leader-election-renew-deadline=20s"], "longer than the renew deadline"),
        (["--leader-election-retry-period=9s"], "1.2 x the retry period"),
        (["--leader-election-lease-duration=2.5s"], "whole seconds"),
        (["--leader-election-retry-period=soon"], "'soon' is no duration"),
        (["--leader-election-retry-period=0"], "is no duration"),
    ],
)
def test_timings_client_go_would_refuse_stop_run_before_it_starts(
    flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit, match=message):
        _settings("--leader-elect", *flags)
