"""Git sources, driven by the git CLI through anyio subprocesses."""
