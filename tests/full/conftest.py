"""The full tier's timings: each test records its phases (build, load and run per precision); the session ends
with a table of them and the tier's wall time (``make test-full``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

#: (test, phase, seconds), in the order they were measured
TIMINGS: list[tuple[str, str, float]] = []
_STARTED = time.perf_counter()


class Timer:
    """Measures the phases of one test: ``with timer("load float32"): ...``."""

    def __init__(self, test: str) -> None:
        self.test = test

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            TIMINGS.append((self.test, phase, time.perf_counter() - started))


@pytest.fixture
def timer(request: pytest.FixtureRequest) -> Timer:
    return Timer(request.node.name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("full-size tier: seconds per phase")
    for test, phase, seconds in TIMINGS:
        terminalreporter.write_line(f"{test:<40} {phase:<26} {seconds:8.1f}")
    terminalreporter.write_line(f"{'wall time since collection':<67} {time.perf_counter() - _STARTED:8.1f}")
