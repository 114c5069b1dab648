"""Fixtures and hooks of the device check. Inert unless a test marked `gpu` is selected (`scripts/gpu-check.sh`
runs `pytest -m gpu tests/gpu`; the default run deselects them): then each test is one check of gpu-check.json,
named by its marker's argument, and whether it passed is recorded after each test; at the end the file is completed
and a check that failed outside the tests (the wheel install, engine_compat) fails the run too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .device import DeviceCheck

STEPS = ("bench", "train", "generation")
DEVICE = pytest.StashKey[DeviceCheck]()


def check_name(item: pytest.Item) -> str | None:
    """The gpu-check.json entry a device test fills: its `gpu` marker's argument (None for other tests)."""
    marker = item.get_closest_marker("gpu")
    return marker.args[0] if marker is not None and marker.args else None


def chosen_steps() -> list[str]:
    """GPU_CHECK_STEPS (default bench,train,generation) as a list; ValueError naming an unknown step."""
    chosen = [s.strip() for s in os.environ.get("GPU_CHECK_STEPS", ",".join(STEPS)).split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r} in GPU_CHECK_STEPS (bench, train, generation)")
    return chosen


@pytest.hookimpl(trylast=True)  # after `-m` has deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselects the device tests of the steps GPU_CHECK_STEPS does not name."""
    try:
        chosen = chosen_steps()
    except ValueError:
        return  # pytest_collection_finish stops the run with the message
    dropped = [item for item in items if check_name(item) in STEPS and check_name(item) not in chosen]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Starts the check (mode, folders, gpu-check.json) when a device test is to run."""
    if not session.config.option.collectonly and any(check_name(item) for item in session.items):
        try:
            chosen_steps()
            session.config.stash[DEVICE] = DeviceCheck()
        except (ValueError, OSError) as err:  # a bad GPU_CHECK_* value or folder: exit status 2 (gpu-check.sh)
            pytest.exit(str(err), returncode=2)


def _reason(excinfo: pytest.ExceptionInfo) -> str:
    exc = excinfo.value
    text = str(exc) if isinstance(exc, AssertionError | pytest.fail.Exception) else f"{type(exc).__name__}: {exc}"
    return (text.strip().splitlines() or [type(exc).__name__])[0][:2000]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Records each device test's outcome in gpu-check.json (a failed set-up, e.g. the fixtures, fails it too)."""
    outcome = yield
    report = outcome.get_result()
    device, name = item.config.stash.get(DEVICE, None), check_name(item)
    if device is None or name is None or not (report.when == "call" or report.failed):
        return
    failure = None
    if report.failed:
        reason = _reason(call.excinfo) if report.when == "call" else f"{report.when} failed: {_reason(call.excinfo)}"
        failure = f"{item.callspec.id}: {reason}" if hasattr(item, "callspec") else reason
    device.record(name, failure)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Completes gpu-check.json; a failed check the tests do not cover (install, engine_compat) fails the run."""
    device = session.config.stash.get(DEVICE, None)
    if device is not None and device.finish(exitstatus) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The check's verdict, one line per check (`gpu-check PASSED (cuda)`)."""
    device = config.stash.get(DEVICE, None)
    if device is not None:
        terminalreporter.section("gpu-check")
        for line in device.summary_lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> DeviceCheck:
    """The running check (mode, plan, folders, the steps' environment, gpu-check.json)."""
    return request.config.stash[DEVICE]


@pytest.fixture(scope="session")
def work(device: DeviceCheck) -> Path:
    """The scratch folder with the fixtures written: GLUE files, an encoder, the bench's MiniLM stand-in."""
    device.write_fixtures()
    return device.work


@pytest.fixture
def check(request: pytest.FixtureRequest, device: DeviceCheck) -> dict[str, Any]:
    """This test's entry of gpu-check.json, for its numbers (whether it passed is recorded by the hook above)."""
    return device.result["checks"].setdefault(check_name(request.node), {})
