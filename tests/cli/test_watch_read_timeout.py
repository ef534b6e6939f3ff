"""``run --watch-read-timeout``: a number of seconds, at least the floor below which a restarted
watch would be handed dead pooled connections (see adapters/kube/watching.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from aioreconcile import cli, runtime

RUN = (sys.executable, "-m", "aioreconcile", "run", "--config", "c.yaml")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("5", "must be at least 20 seconds: '5'"),
        ("-1", "must be at least 20 seconds: '-1'"),
        ("inf", "must be at least 20 seconds: 'inf'"),
        ("nan", "must be at least 20 seconds: 'nan'"),
        ("soon", "not a number of seconds: 'soon'"),
    ],
)
def test_a_read_timeout_below_the_floor_or_not_a_number_is_refused(value: str, error: str) -> None:
    result = subprocess.run(
        [*RUN, "--watch-read-timeout", value],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert error in result.stderr


def test_the_default_is_the_documented_90_s_and_a_value_reaches_the_settings() -> None:
    parser = cli._parser()
    assert parser.parse_args(["run", "--config", "c"]).watch_read_timeout == 90.0
    given = parser.parse_args(["run", "--config", "c", "--watch-read-timeout", "30"])
    assert given.watch_read_timeout == 30.0
    assert runtime.RunSettings(config=Path("c")).watch_read_timeout_s == 90.0
