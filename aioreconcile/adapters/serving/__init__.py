"""The controller's HTTP server: webhooks plus /healthz, /readyz, /metrics and /status."""
