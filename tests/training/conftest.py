import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import tiny_config  # noqa: E402

from medsemgan.training.gan import GanTrainer  # noqa: E402
from medsemgan.training.run import build_networks  # noqa: E402
from medsemgan.training.synthetic import synthetic_tensors  # noqa: E402


@pytest.fixture
def make_trainer():
    def make(training=None, **kw):
        cfg = tiny_config(training, **kw)
        models = build_networks(cfg)
        tensors = synthetic_tensors(16, 8, 3, seed=0)
        torch.manual_seed(11)
        return GanTrainer(cfg, models, tensors)

    return make


@pytest.fixture(autouse=True)
def _tiny_models_one_thread(one_thread):
    """Every test here uses one torch thread (tests/conftest.py::one_thread says why)."""
