"""Fixtures of the op tests.

``cpu_ext`` builds (first run, ~1-2 min) or imports (later runs, cached under
``medsemgan.paths.cache_dir()/ops`` or ``$MEDSEMGAN_OPS_CACHE``) the CPU extension. A build
failure here is a test failure, not a skip: the CPU extension must build wherever tests run.
Every test starts with ``MEDSEMGAN_OPS`` unset and the loader's memory of failures cleared.
"""

from __future__ import annotations

import os

import pytest
import torch

from medsemgan.ops import loader


@pytest.fixture(autouse=True)
def _clean_ops_state(monkeypatch):
    monkeypatch.delenv(loader.ENV_MODE, raising=False)
    saved = dict(loader._modules)
    loader._failures.clear()
    yield
    loader._failures.clear()
    loader._modules.clear()
    loader._modules.update(saved)


@pytest.fixture(scope="session")
def cpu_ext():
    module = loader.build("cpu")
    loader._modules["cpu"] = module
    return module


@pytest.fixture
def gen():
    """A generator with a fresh seed each run (``gen.initial_seed()`` reproduces a failure)."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
