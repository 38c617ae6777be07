"""Shared fixtures.

``shared_data`` gives the real studies. Without them a test skips with the reason, except when
``MEDSEMGAN_REQUIRE_DATA=1`` (CI), where a missing data folder is a failure, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from medsemgan.paths import data_root

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _require_data() -> bool:
    return os.environ.get("MEDSEMGAN_REQUIRE_DATA", "") not in ("", "0", "false", "False")


@pytest.fixture
def one_thread():
    """One torch thread for the duration of a test, restored afterwards.

    Tiny networks are overhead-bound: a second thread gains nothing, and on a shared 2-core
    machine OpenMP threads that wait for each other make them many times slower. The folders of
    tiny-model tests turn this on for all their tests (an autouse fixture in their conftest.py).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if root is None:
        reason = (
            "real studies not found: set MEDSEMGAN_DATA or place them at ../shared/data "
            "beside the repository"
        )
        if _require_data():
            pytest.fail(reason + " (MEDSEMGAN_REQUIRE_DATA=1 makes this a failure)")
        pytest.skip(reason)
    return root


def pytest_collection_modifyitems(config, items):
    # Tests that use the real data are marked so `-m data` selects them.
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
