"""OpenTelemetry spans, their export to a real Jaeger, log correlation and `aioreconcile trace`."""
