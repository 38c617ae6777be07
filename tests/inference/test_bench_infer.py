import json

import nibabel as nib
import numpy as np
import torch
import yaml

from medsemgan.cli import main
from medsemgan.inference.model import SegmentationModel

TINY = {
    "model": {"resolution": 32, "generator": {"z_dim": 32, "w_dim": 32, "channel_base": 256,
                                              "channel_max": 32, "mapping_layers": 2}},
    "encoder": {"channels": [8, 16, 16], "fpn_channels": 16, "head_channels": 8},
    "inference": {"steps": 2, "batch_size": 8, "modality_overrides": {"MR": {"perceptual": "lncc", "mse_weight": 0.0}}},
}


def test_bench_infer_prints_the_timings_and_the_batched_speedup(tmp_path, capsys):
    torch.manual_seed(0)
    SegmentationModel.build(TINY).save(tmp_path / "bundle")
    (tmp_path / "bundle" / "configs").mkdir()
    (tmp_path / "bundle" / "configs" / "model.yaml").write_text(yaml.safe_dump(TINY))
    volume = np.full((30, 30, 6), 0.0, np.float32)  # no air below -500 HU: guessed MR
    volume[4:26, 4:26] = 300.0
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "mr.nii.gz")
    assert main(["bench", "infer", "--bundle", str(tmp_path / "bundle"), "--mr", str(tmp_path / "mr.nii.gz"),
                 "--skip-ct", "--speedup-slices", "3", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"].startswith("trained weights from")
    assert result["mr_slices"] == 6 and result["steps"] == 2
    assert result["mr_seconds_optimized"] > 0 and result["mr_seconds_encoder_only"] > 0
    assert result["batched_vs_serial"]["slices"] == 3 and result["speedup"] > 0
    assert result["batched_vs_serial"]["masks_identical"] is True
    # the comparison runs the MR path segment uses (its modality_overrides), not the shared options
    assert result["batched_vs_serial"]["modality"] == "MR"
    assert result["batched_vs_serial"]["perceptual"] == "lncc"
    assert result["peak_rss_mib"] > 0 and "ct_seconds_optimized" not in result
    assert "mr_smoothing_cost" not in result  # nothing to compare: the configuration does not smooth


def test_bench_infer_compares_one_full_batch_and_keeps_the_fastest_of_alternating_runs(tmp_path, capsys):
    torch.manual_seed(0)
    config = {**TINY, "inference": {**TINY["inference"], "batch_size": 4, "smooth_weight": 1.0}}
    SegmentationModel.build(config).save(tmp_path / "bundle")
    (tmp_path / "bundle" / "configs").mkdir()
    (tmp_path / "bundle" / "configs" / "model.yaml").write_text(yaml.safe_dump(config))
    volume = np.full((30, 30, 6), 0.0, np.float32)
    volume[4:26, 4:26] = 300.0
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "mr.nii.gz")
    assert main(["bench", "infer", "--bundle", str(tmp_path / "bundle"), "--mr", str(tmp_path / "mr.nii.gz"),
                 "--skip-ct", "--repeats", "2", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    comparison = result["batched_vs_serial"]
    assert result["batch_size"] == 4 and comparison["slices"] == 4  # one full slice batch
    assert comparison["repeats"] == 2
    for name in ("batched", "serial"):
        runs = comparison["runs_seconds"][name]
        assert len(runs) == 2 and comparison[f"{name}_seconds"] == min(runs)
    assert result["tto"]["modconv_form"] == "batched"
    assert isinstance(result["keep_freed_memory"], bool)
    cost = result["mr_smoothing_cost"]  # the configured smoothness against the same volume without it
    assert cost["seconds_smoothed"] == result["mr_seconds_optimized"] and cost["seconds_independent"] > 0
    assert cost["smooth_weight_independent"] == 0.0
    assert cost["cpu_ratio"] == round(cost["cpu_seconds_smoothed"] / cost["cpu_seconds_independent"], 3)


def test_bench_infer_records_the_volume_under_the_data_root_as_data(tmp_path, capsys, monkeypatch):
    """A committed benchmark record must not name this machine's folders."""
    torch.manual_seed(0)
    SegmentationModel.build(TINY).save(tmp_path / "bundle")
    (tmp_path / "bundle" / "configs").mkdir()
    (tmp_path / "bundle" / "configs" / "model.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "data" / "mr").mkdir(parents=True)
    volume = np.full((30, 30, 3), 0.0, np.float32)
    volume[4:26, 4:26] = 300.0
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "data" / "mr" / "image_2.nii.gz")
    monkeypatch.setenv("MEDSEMGAN_DATA", str(tmp_path / "data"))
    assert main(["bench", "infer", "--bundle", str(tmp_path / "bundle"), "--skip-ct", "--speedup-slices", "1",
                 "--mr", str(tmp_path / "data" / "mr" / "image_2.nii.gz"), "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mr_volume"] == "DATA/mr/image_2.nii.gz"
