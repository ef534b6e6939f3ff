"""Every ``async def`` test runs on anyio's asyncio backend (``anyio_mode = auto``), one loop."""

import os
from collections.abc import Generator

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """One event loop for the session, so session-scoped async fixtures (the cluster) work."""
    return "asyncio"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI a skip is a failure: a skipped integration test would hide a missing component."""
    report: pytest.TestReport = yield
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run everything: {report.longrepr}"
    return report
