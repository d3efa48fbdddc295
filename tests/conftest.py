"""Shared fixtures: the real instrument files in ../shared/testdata (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTDATA = Path(os.environ.get("HYDRAFM_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The folder of public instrument files; skips the test when it is not there."""
    if not (TESTDATA / "MANIFEST.md").exists():
        pytest.skip(f"real instrument files not found in {TESTDATA}")
    return TESTDATA


GUI_FIXTURES = {"qtbot", "qapp", "make_napari_viewer"}
NO_DISPLAY = ("no X server for the napari GUI tests: install one (Debian/Ubuntu: apt-get install xvfb; "
              "pytest-xvfb then starts it) or set DISPLAY")


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or os.environ.get("QT_QPA_PLATFORM") == "offscreen")


def pytest_report_header(config):
    return None if _has_display() else f"hydrafm: {NO_DISPLAY}; GUI tests are skipped"


def pytest_collection_modifyitems(config, items):
    """Skip the GUI tests when there is no display (Qt would abort the whole run).

    With ``HYDRAFM_REQUIRE_GUI=1`` (set by ``.ci/run``, which installs Xvfb) a missing display
    is an error instead: CI must not pass with its GUI tests skipped.
    """
    if _has_display():
        return
    gui = [it for it in items if it.get_closest_marker("gui") or GUI_FIXTURES & set(getattr(it, "fixturenames", ()))]
    if not gui:
        return
    if os.environ.get("HYDRAFM_REQUIRE_GUI"):
        raise pytest.UsageError(f"HYDRAFM_REQUIRE_GUI is set but there is {NO_DISPLAY}")
    skip = pytest.mark.skip(reason=NO_DISPLAY)
    for it in gui:
        it.add_marker(skip)


# ------------------------------------------------------------------ leaving the test process
# The suite loads Qt on an Xvfb display, Mesa's LLVM (software OpenGL for napari) and PoCL's LLVM
# (ppafm's OpenCL) into one process, which no user process does (napari runs ppafm in a child
# process). Collecting and tearing all of that down after the run — pytest's unconfigure runs a
# garbage collection, then the interpreter's exit, after pytest-xvfb's atexit hook has stopped the
# X server — segfaulted once in CI *after* every test had passed (exit 139, stop 27). So once
# pytest has written its report (this wrapper is the outermost, so its second half runs after the
# summary), the X server is stopped and the process leaves with pytest's exit status, without
# that teardown. HYDRAFM_TEST_TEARDOWN=1 keeps the teardown.


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    result = yield
    if os.environ.get("HYDRAFM_TEST_TEARDOWN") != "1":
        import sys

        try:
            import pytest_xvfb

            pytest_xvfb.shutdown_xvfb()
        except Exception:  # noqa: BLE001 - no pytest-xvfb, or its display already gone
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(session.exitstatus))
    return result
