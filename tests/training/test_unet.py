"""The supervised U-Net baseline: training, bit-exact resume, export, volume inference."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medsemgan.errors import InputError
from medsemgan.inference.unet import UNetSegmenter, predict_slices, segment_volume_unet
from medsemgan.training.unet import load_unet_config, normalise_config, train_unet

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluation"))
from report_fixtures import phantom_volume, tiny_unet_config  # noqa: E402


def config(**training) -> dict:
    cfg = tiny_unet_config()
    cfg["training"].update({"iterations": 4, "checkpoint_every": 100, **training})
    return normalise_config(cfg)


def test_training_resumes_bit_for_bit(tmp_path):
    whole = train_unet(config(), tmp_path / "whole")
    first = train_unet(config(), tmp_path / "split", max_steps=2)
    assert (first["steps"], first["finished"]) == (2, False)
    assert not (tmp_path / "split" / "unet.pt").exists()  # nothing exported before the end
    second = train_unet(config(), tmp_path / "split", resume=True)
    assert (second["steps"], second["finished"]) == (4, True)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["net"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["net"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert whole["final_loss"] == second["final_loss"]
    # training moved the weights away from their initialisation
    from medsemgan.training.unet import build_unet

    torch.manual_seed(tiny_unet_config()["training"].get("seed", 0))
    init = build_unet(config()["model"]).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a if a[k].is_floating_point())


def test_existing_checkpoint_needs_resume_and_matching_config(tmp_path):
    train_unet(config(), tmp_path / "run", max_steps=1)
    with pytest.raises(InputError, match="--resume"):
        train_unet(config(), tmp_path / "run")
    other = config()
    other["model"]["channels"] = [4, 8, 16]
    with pytest.raises(InputError, match="different model"):
        train_unet(other, tmp_path / "run", resume=True)


def test_wall_clock_budget_stops_and_exports(tmp_path):
    summary = train_unet(config(iterations=1000, max_seconds=1e-6), tmp_path / "run")
    assert summary["steps"] == 1 and summary["finished"] and summary["stopped_by"] == "max_seconds"
    assert (tmp_path / "run" / "unet.pt").is_file()


def test_exported_weights_are_fp16_state_dict_with_sidecar(tmp_path):
    summary = train_unet(config(), tmp_path / "run")
    state = torch.load(summary["weights"], weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    side = json.loads(Path(summary["sidecar"]).read_text())
    assert side["iterations"] == 4 and side["resolution"] == 32
    assert side["architecture"]["channels"] == [4, 8, 8]
    assert side["data"]["labeled_slices"] == 4
    # the loaded segmenter reproduces the trained network (up to fp16 rounding)
    segmenter = UNetSegmenter.from_file(summary["weights"])
    net_state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["net"]
    from medsemgan.training.unet import build_unet

    reference = build_unet(side["architecture"])
    reference.load_state_dict(net_state)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = torch.sigmoid(reference.eval()(x))
    got = predict_slices(segmenter, x, batch_size=2)
    assert got.shape == (3, 1, 32, 32)
    assert torch.allclose(got, expected, atol=2e-2)


def test_unet_segments_a_volume_onto_its_own_grid(tmp_path):
    summary = train_unet(config(), tmp_path / "run")
    segmenter = UNetSegmenter.from_file(summary["weights"])
    image, _ = phantom_volume(shape=(50, 44, 5))
    # an oblique-free but flipped, shifted affine: the mask must come back on exactly this grid
    affine = torch.tensor([[-3.0, 0, 0, 100], [0, -3.5, 0, 20], [0, 0, 4.0, -50], [0, 0, 0, 1]], dtype=torch.float64)
    volume = MetaTensor(torch.from_numpy(image)[None], affine=affine)
    mask, extras = segment_volume_unet(volume, segmenter, modality="CT")
    assert tuple(mask.shape) == (1, 50, 44, 5) and mask.dtype == torch.uint8
    assert torch.equal(mask.affine.double(), affine)
    assert extras["modality"] == "CT" and extras["slices"] == 5
    assert set(torch.unique(mask).tolist()) <= {0, 1}


def test_bad_weights_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no U-Net weights"):
        UNetSegmenter.from_file(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read"):
        UNetSegmenter.from_file(junk)
    summary = train_unet(config(), tmp_path / "run")
    with pytest.raises(InputError, match="do not match"):
        UNetSegmenter.from_file(summary["weights"], architecture={"channels": [8, 16, 16]})


def test_config_rejects_unknown_keys_and_shipped_config_loads():
    with pytest.raises(InputError, match="unknown keys in training"):
        normalise_config({"training": {"iterations": 5, "learning_rate": 0.1}})
    with pytest.raises(InputError, match="divisible"):
        normalise_config({"data": {"resolution": 100}})
    shipped = load_unet_config()
    assert shipped["data"]["resolution"] == 128
    assert shipped["model"]["channels"] == [16, 32, 64, 128, 256]


def test_train_unet_cli(tmp_path, monkeypatch):
    import yaml

    from medsemgan.cli import main

    cfg = tiny_unet_config()
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    export = tmp_path / "bundle" / "unet_baseline_tiny.pt"
    code = main(["train", "unet", "--config", str(path), "--out", str(tmp_path / "run"),
                 "--iterations", "3", "--export", str(export)])
    assert code == 0
    assert export.is_file() and json.loads(export.with_suffix(".json").read_text())["iterations"] == 3
    assert main(["train", "unet", "--config", str(path), "--out", str(tmp_path / "run")]) == 2  # needs --resume


def test_modality_augment_is_validated_and_reaches_the_training_batch():
    from medsemgan.training import unet as unet_module
    from medsemgan.training.modality_augment import modality_shift

    with pytest.raises(InputError, match="modality_augment"):
        normalise_config({"training": {"modality_augment": {"p": -1}}})
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    masks = (images > 0).float()
    off_a, _ = unet_module.augment_batch(images, masks, {"p": 0.0})
    torch.manual_seed(0)
    plain, _ = unet_module.augment_batch(images, masks, {"p": 0.0}, {"p": 0.0})
    torch.manual_seed(0)
    shifted, shifted_masks = unet_module.augment_batch(images, masks, {"p": 0.0}, {"p": 1.0})
    assert torch.equal(off_a, plain)
    assert not torch.equal(shifted, plain)
    assert torch.equal(shifted_masks, masks)  # the mask is never remapped
    # The shift comes after the geometric/intensity jitter: with that off, it is the whole change.
    from medsemgan.training.modality_augment import ModalityAugmentConfig

    torch.manual_seed(0)
    unet_module.augment_batch(images, masks, {"p": 0.0})  # the same RNG draws as above
    assert torch.equal(shifted, modality_shift(plain, ModalityAugmentConfig(p=1.0)))


def test_sidecar_paths_are_portable():
    """A committed sidecar must not carry the exporting machine's absolute paths."""
    from types import SimpleNamespace

    from medsemgan.paths import REPO_DIR
    from medsemgan.training.unet import sidecar

    config = {"model": {"channels": [8, 16]}, "data": {"resolution": 64},
              "training": {"export_dtype": "float16", "progress": True},
              "_source": str(REPO_DIR / "medsemgan" / "configs" / "unet_cpu.yaml")}
    trainer = SimpleNamespace(step_index=3, seconds=1.0)
    record = sidecar(config, {}, trainer, None)
    assert record["config_source"] == "medsemgan/configs/unet_cpu.yaml"
    assert "progress" not in record["training"]
    assert sidecar({**config, "_source": None}, {}, trainer, None)["config_source"] is None
