"""``run --max-retry-delay``: the cap of a failed sync's retry backoff (Flux's flag of the same
name); tests/faults/test_git_faults.py shows the retries of a real outage capped by it."""

import subprocess
import sys
from pathlib import Path

import pytest

from aioreconcile import cli, runtime

RUN = (sys.executable, "-m", "aioreconcile", "run", "--config", "c.yaml")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("0.05", "must be at least 0.1 seconds: '0.05'"),
        ("-1", "must be at least 0.1 seconds: '-1'"),
        ("inf", "must be at least 0.1 seconds: 'inf'"),
        ("nan", "must be at least 0.1 seconds: 'nan'"),
        ("later", "not a number of seconds: 'later'"),
    ],
)
def test_a_retry_cap_below_the_first_delay_or_not_a_number_is_refused(
    value: str, error: str
) -> None:
    result = subprocess.run(
        [*RUN, "--max-retry-delay", value], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert error in result.stderr


def test_the_default_is_60_s_and_a_value_reaches_the_settings() -> None:
    parser = cli._parser()
    assert parser.parse_args(["run", "--config", "c"]).max_retry_delay == 60.0
    given = parser.parse_args(["run", "--config", "c", "--max-retry-delay", "10"])
    assert given.max_retry_delay == 10.0
    assert runtime.RunSettings(config=Path("c")).max_retry_delay_s == 60.0
