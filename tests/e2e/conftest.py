"""End-to-end: the controller in-process against the real apiserver and real git servers."""

from tests.git.conftest import git_daemon, served_root, upstream

__all__ = ["git_daemon", "served_root", "upstream"]
