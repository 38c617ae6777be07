"""`medsemgan demo` end to end with a tiny random model, and the sample it segments."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from bundle_fixtures import copy_bundle
from PIL import Image

from medsemgan.cli import main


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def test_make_sample_is_small_canonical_and_reproducible(bundle, tmp_path):
    from medsemgan.bundle.make_sample import file_sha256, make_sample

    first = make_sample(bundle, slices=6, seed=3)
    image = nib.load(first["image"])
    label = nib.load(first["label"])
    assert image.shape == (32, 32, 6) and label.shape == image.shape
    assert "".join(nib.aff2axcodes(image.affine)) == "PLS"
    np.testing.assert_allclose(image.affine, label.affine)
    hu = np.asarray(image.dataobj)
    assert hu.dtype == np.int16 and hu.min() == -1000 and hu.max() <= 240
    info = json.loads(open(first["info"]).read())
    assert info["synthetic"] is True and info["generator_sha256"] == file_sha256(bundle / "models" / "generator.pt")
    assert info["liver_voxels"] == int(np.asarray(label.dataobj).sum())
    again = make_sample(bundle, out_dir=tmp_path / "again", slices=6, seed=3)
    assert np.array_equal(np.asarray(nib.load(again["image"]).dataobj), hu)
    assert sum(p.stat().st_size for p in (bundle / "sample").rglob("*") if p.is_file()) < 1_000_000


def test_demo_segments_the_sample_and_writes_mask_overlay_summary(bundle, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--bundle", str(bundle), "--out", str(out), "--device", "cpu", "--no-real",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "made one from its generator" in printed  # the tiny bundle ships no sample
    assert "Dice" in printed and "real studies: skipped (--no-real)" in printed
    summary = json.loads((out / "demo.json").read_text())
    (record,) = summary["results"]
    assert record["case"] == "sample_ct" and record["seconds"] > 0
    mask = nib.load(record["mask"])
    sample = nib.load(out / "sample" / "images" / "sample_ct.nii.gz")
    assert mask.shape == sample.shape
    # the printed Dice is the written mask's against the sample's label (rounded to 4 places)
    label = np.asarray(nib.load(out / "sample" / "labels" / "sample_ct.nii.gz").dataobj) > 0
    assert record["dice"] == pytest.approx(dice_of(np.asarray(mask.dataobj) > 0, label), abs=6e-5)
    np.testing.assert_allclose(mask.affine, sample.affine)
    label = np.asarray(nib.load(out / "sample" / "labels" / "sample_ct.nii.gz").dataobj) > 0
    pred = np.asarray(mask.dataobj) > 0
    assert record["dice"] == pytest.approx(2 * (pred & label).sum() / (pred.sum() + label.sum()), abs=1e-4)
    png = Image.open(record["overlay"])
    assert png.format == "PNG" and png.width > png.height >= 256
    colours = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert ((colours == (64, 220, 64)).all(1)).any()  # the label's contour is drawn


def test_demo_uses_the_bundle_sample_when_shipped(bundle, tmp_path, capsys):
    from medsemgan.bundle.make_sample import make_sample

    make_sample(bundle, slices=4)
    assert main(["demo", "--bundle", str(bundle), "--out", str(tmp_path / "demo"), "--device", "cpu",
                 "--no-real", "--no-progress", "--steps", "0"]) == 0
    printed = capsys.readouterr().out
    assert "note:" not in printed
    assert not (tmp_path / "demo" / "sample").exists()
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["results"][0]["steps"] == 0


def test_demo_flags_a_sample_made_with_other_weights(bundle, tmp_path, capsys):
    import torch

    from medsemgan.bundle.make_sample import make_sample

    make_sample(bundle, slices=4)
    state = torch.load(bundle / "models" / "generator.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, bundle / "models" / "generator.pt")
    assert main(["demo", "--bundle", str(bundle), "--out", str(tmp_path / "demo"), "--device", "cpu",
                 "--no-real", "--no-progress", "--steps", "0"]) == 0
    assert "made with other generator weights" in capsys.readouterr().out


def test_demo_without_weights_says_so_honestly(tmp_path, capsys):
    empty = copy_bundle(tmp_path / "bundle")
    assert main(["demo", "--bundle", str(empty), "--out", str(tmp_path / "demo"), "--no-real"]) == 1
    err = capsys.readouterr().err
    assert "no trained weights" in err and "models/generator.pt" in err and "models/encoder.pt" in err
    assert "medsemgan train gan" in err


def test_demo_with_the_real_studies(shared_data, bundle, tmp_path, capsys):
    assert main(["demo", "--bundle", str(bundle), "--out", str(tmp_path / "demo"), "--device", "cpu",
                 "--no-progress", "--steps", "0"]) == 0
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    cases = [r["case"] for r in summary["results"]]
    assert cases == ["sample_ct", "chaos_ct_1", "chaos_t2_2"]
    from medsemgan.data.catalogue import get_study

    for record in summary["results"][1:]:
        label = np.asarray(get_study(shared_data, record["case"]).load()["label"][0]) > 0
        mask = np.asarray(nib.load(record["mask"]).dataobj) > 0
        assert record["dice"] == pytest.approx(dice_of(mask, label), abs=6e-5)
        assert (tmp_path / "demo" / f"{record['case']}_overlay.png").is_file()
    assert [r["modality"] for r in summary["results"]] == ["CT", "CT", "MR"]


def dice_of(mask: np.ndarray, label: np.ndarray) -> float:
    return float(2 * np.logical_and(mask, label).sum() / (mask.sum() + label.sum()))
