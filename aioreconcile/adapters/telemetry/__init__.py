"""OpenTelemetry setup and spans: one trace per commit."""
