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
