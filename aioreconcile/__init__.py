"""aioreconcile: an event-driven GitOps controller for Kubernetes."""

__version__ = "0.1.0"
