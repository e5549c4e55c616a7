"""Print the container test's timings and image sizes in pytest's summary."""

from __future__ import annotations

import pytest

from tests.containers import test_compose_stack as stack_test


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if stack_test.TIMES:
        terminalreporter.section("containers")
        for step, seconds in stack_test.TIMES.items():
            terminalreporter.write_line(f"{step:>24}: {seconds:7.1f} s")
        for image, mb in stack_test.SIZES.items():
            terminalreporter.write_line(f"{image + ' image':>24}: {mb:7.0f} MB")
