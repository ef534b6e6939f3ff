"""The pure core: planning, inventory, health and diff as functions of data.

Nothing here awaits, opens a socket or imports a client library (import-linter enforces it), so
every decision can be tested with plain data and no cluster.
"""
