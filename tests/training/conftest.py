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
def one_thread():
    # The tiny networks gain nothing from a second thread, and on a shared 2-core machine
    # OpenMP threads that wait for each other make them many times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
