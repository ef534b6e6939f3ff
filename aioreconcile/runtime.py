"""The composition root: the one place that builds clients and wires adapters into the reactor."""
