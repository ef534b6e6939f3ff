"""``run --heal-concurrency``: the heals' own limit reaches the settings; nonsense is refused."""

import subprocess
import sys
from pathlib import Path

import pytest

from aioreconcile import cli, runtime

RUN = (sys.executable, "-m", "aioreconcile", "run", "--config", "c.yaml")


@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        ("--heal-concurrency", "0", "must be at least 1: '0'"),
        ("--heal-concurrency", "many", "not a whole number: 'many'"),
        ("--concurrency", "-2", "must be at least 1: '-2'"),
    ],
)
def test_a_limit_below_one_or_not_a_number_is_refused(flag: str, value: str, error: str) -> None:
    result = subprocess.run([*RUN, flag, value], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert error in result.stderr


def test_the_default_is_16_and_a_value_reaches_the_settings() -> None:
    parser = cli._parser()
    assert parser.parse_args(["run", "--config", "c"]).heal_concurrency == 32
    given = parser.parse_args(["run", "--config", "c", "--heal-concurrency", "4"])
    assert given.heal_concurrency == 4
    assert runtime.RunSettings(config=Path("c")).heal_concurrency == 32
