"""The bundle's SaveMaskd: threshold, optional 3-D post-processing, the case JSON's liver volume."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medsemgan.bundle.transforms import INPUT_AFFINE_KEY, INPUT_SHAPE_KEY, SaveMaskd


def _item(prob: torch.Tensor) -> dict:
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    return {"pred": prob, "case": "c1", INPUT_AFFINE_KEY: affine, INPUT_SHAPE_KEY: torch.tensor(prob.shape[1:])}


@pytest.mark.parametrize("mode, voxels", [("none", 610), ("largest", 592), ("largest_fill", 600)])
def test_save_mask_postprocesses_and_reports_the_liver_volume(tmp_path, mode, voxels):
    prob = torch.zeros(1, 20, 20, 10)
    prob[0, 2:12, 2:12, 2:8] = 0.9  # 600 voxels
    prob[0, 5:7, 5:7, 4:6] = 0.1  # an enclosed hole of 8
    prob[0, 15:18, 15:18, 3:5] = 0.8  # an island of 18
    out = SaveMaskd(output_dir=tmp_path, postprocess=mode)(_item(prob))
    written = np.asarray(nib.load(tmp_path / "c1.nii.gz").dataobj)
    assert int(written.sum()) == voxels == int(out["pred"].sum())
    record = json.loads((tmp_path / "c1.json").read_text())
    assert record["postprocess"] == mode
    assert record["liver_voxels"] == voxels
    assert record["liver_volume_ml"] == pytest.approx(voxels * 12 / 1000)


def test_save_mask_refuses_an_unknown_postprocess(tmp_path):
    with pytest.raises(ValueError, match="postprocess"):
        SaveMaskd(output_dir=tmp_path, postprocess="smooth")
