"""The one home of weights I/O (``medsemgan.weights``) and of modality names (``medsemgan.modality``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsemgan.errors import InputError
from medsemgan.io_utils import write_json
from medsemgan.modality import check_modality, guess_modality, modality_name
from medsemgan.weights import (DTYPES, cast_state_dict, load_into, load_state_dict_file, read_weights,
                               resolve_device, save_state_dict)


class Unsafe:
    """Any pickled object that is not a tensor: ``weights_only`` must refuse it."""


def test_read_weights_refuses_code_and_names_the_file(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"x": Unsafe()}, path)
    with pytest.raises(InputError, match="cannot read U-Net weights") as info:
        read_weights(path, "U-Net weights")
    assert str(path) in str(info.value)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        read_weights(tmp_path / "junk.pt", "checkpoint")


def test_cast_save_load_round_trip(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = cast_state_dict(net.state_dict(), "fp16")
    assert state["0.weight"].dtype == torch.float16
    assert state["1.num_batches_tracked"].dtype == torch.int64  # integer buffers untouched
    assert cast_state_dict(net.state_dict(), torch.bfloat16)["0.weight"].dtype == torch.bfloat16
    assert cast_state_dict(net.state_dict(), None)["0.weight"].dtype == torch.float32
    assert set(DTYPES) >= {"fp16", "bf16", "fp32"}
    with pytest.raises(ValueError, match="dtype must be one of"):
        cast_state_dict(net.state_dict(), "int8")
    path = save_state_dict(state, tmp_path / "w.pt")
    loaded = load_state_dict_file(path, "encoder")
    assert torch.equal(loaded["0.weight"], state["0.weight"])
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    load_into(other, {k: v.float() if v.is_floating_point() else v for k, v in loaded.items()}, path, "encoder")
    assert torch.allclose(other[0].weight, net[0].weight, atol=1e-3)
    with pytest.raises(InputError, match="encoder weights do not match"):
        load_into(torch.nn.Linear(4, 2), loaded, path, "encoder")


def test_resolve_device_names_where_the_value_came_from():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(InputError, match="training.device 'nonsense'"):
        resolve_device("nonsense", "training.device")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cuda: CUDA is not available"):
            resolve_device("cuda")


def test_write_json_is_atomic_and_indented(tmp_path):
    path = write_json({"b": 1, "a": [1, 2]}, tmp_path / "x" / "d.json", sort_keys=True)
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["d.json"]


@pytest.mark.parametrize("value, expected", [("CT", "CT"), ("mr", "MR"), ("MRI", "MR"), (" mri ", "MR"), ("pet", "PET")])
def test_modality_name(value, expected):
    assert modality_name(value) == expected


def test_check_modality_and_the_intensity_guess():
    assert check_modality("Mri") == "MR"
    with pytest.raises(ValueError, match="--modality must be CT or MR, got 'US'"):
        check_modality("US", "--modality")
    assert guess_modality(torch.tensor([-1000.0, 40.0])) == "CT"
    assert guess_modality(np.array([-500.0, 0.0])) == "CT"  # the boundary is Hounsfield air
    assert guess_modality(torch.tensor([-499.0, 800.0])) == "MR"
