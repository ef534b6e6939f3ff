"""Orchestration: turns triggers into work on per-object lanes. Depends on ports, not adapters."""
