"""Tracing flags on `apply` and `run` win over the OTEL_* environment; absent flags don't."""

from pathlib import Path

import pytest

from aioreconcile import cli


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    args = cli._parser().parse_args(
        [
            "apply",
            str(tmp_path),
            "--otlp-endpoint",
            "http://from-flag:4318",
            "--traces-sampler",
            "parentbased_traceidratio",
            "--traces-sampler-arg",
            "0.25",
        ]
    )

    settings = cli._directory_settings(args).tracing

    assert settings.endpoint == "http://from-flag:4318"
    assert settings.service_name == "from-env"  # no flag given: the environment stays
    assert (settings.sampler, settings.sampler_arg) == ("parentbased_traceidratio", "0.25")


def test_nothing_configured_means_tracing_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    args = cli._parser().parse_args(["apply", str(tmp_path)])

    assert not cli._directory_settings(args).tracing.enabled
