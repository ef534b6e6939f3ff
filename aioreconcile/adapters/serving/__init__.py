"""The controller's HTTP listeners: webhooks on one (exposed), /healthz, /readyz, /metrics and
/status on another (loopback by default); both bounded by ``listening.ListenerLimits``."""
