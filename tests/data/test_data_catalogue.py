"""Every real source through the catalogue: pairing, alignment, geometry, the protocol split."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from medsemgan import cli
from medsemgan.data.catalogue import (
    CHAOS_T2_PATIENTS,
    get_study,
    held_out_studies,
    labeled_studies,
    list_studies,
    training_studies,
)
from medsemgan.data.btcv import BTCV_PATIENTS, BTCV_POOL_PATIENTS

CT_STUDIES = ["chaos_ct_1", "ircadb_1", "totalseg_ct", "totalseg_ct_sm", "totalseg_ct_dicom", "dcmqi_3slice"]
MR_STUDIES = [f"chaos_t2_{n}" for n in CHAOS_T2_PATIENTS] + ["totalseg_mr"]
BTCV_STUDIES = [f"btcv_{i}" for i in BTCV_PATIENTS]


def test_catalogue_lists_every_source(shared_data):
    studies = {s.name: s for s in list_studies(shared_data)}
    assert set(studies) == set(CT_STUDIES + MR_STUDIES + BTCV_STUDIES)
    expected_values = {
        "chaos_ct": 255, "ircadb": 255, "totalseg_ct": 5, "dcmqi": 1, "chaos_t2": 1, "totalseg_mr": 5, "btcv": 6,
    }
    for study in studies.values():
        assert study.liver_value == expected_values[study.source]
        assert study.modality == ("MR" if study.name in MR_STUDIES else "CT")
    assert studies["chaos_ct_1"].prediction_value == 63


def test_protocol_split_keeps_test_studies_out_of_training(shared_data):
    train = {s.name for s in training_studies(shared_data)}
    assert train == {"ircadb_1", "totalseg_ct", "totalseg_ct_dicom", "dcmqi_3slice"} | {
        f"btcv_{i}" for i in BTCV_POOL_PATIENTS
    }
    held_out = {s.name for s in held_out_studies(shared_data)}
    assert "chaos_ct_1" in held_out and set(MR_STUDIES) <= held_out
    assert not train & held_out
    assert labeled_studies(shared_data, 1)[0].name == "ircadb_1"


def test_small_totalseg_ct_is_an_exact_copy_left_out_of_training(study_cache):
    small, full = study_cache("totalseg_ct_sm"), study_cache("totalseg_ct")
    assert small["study"].duplicate_of == "totalseg_ct"
    assert torch.equal(small["image"][..., :], full["image"][..., 82:112])


@pytest.mark.parametrize("name", CT_STUDIES + MR_STUDIES)
def test_study_loads_with_mask_on_the_image_grid(name, study_cache):
    loaded = study_cache(name)
    image, label, meta = loaded["image"], loaded["label"], loaded["meta"]
    assert image.ndim == 4 and image.shape[0] == 1
    assert label.dtype == torch.uint8
    assert tuple(label.shape) == tuple(image.shape)
    assert torch.equal(label.affine, image.affine)
    assert set(torch.unique(label).tolist()) == {0, 1}
    assert np.allclose(meta["affine"], image.affine.numpy())
    assert meta["modality"] == loaded["study"].modality


def _flipped_lr(mask: np.ndarray) -> np.ndarray:
    return mask[::-1]  # the first array axis is left-right for every source


@pytest.mark.parametrize("name", [n for n in CT_STUDIES if n != "totalseg_ct_sm"])
def test_ct_liver_mask_lies_on_liver_intensities(name, study_cache):
    loaded = study_cache(name)
    hu = loaded["image"][0].numpy()
    mask = loaded["label"][0].numpy().astype(bool)
    liver = float(hu[mask].mean())
    assert 0 < liver < 250, f"{name}: mean HU under the liver mask is {liver:.1f}"
    # a misaligned (mirrored) mask falls on other tissue: clearly lower mean HU
    assert liver > float(hu[_flipped_lr(mask)].mean()) + 20


@pytest.mark.parametrize("name", MR_STUDIES)
def test_mr_liver_mask_lies_on_homogeneous_tissue(name, study_cache):
    loaded = study_cache(name)
    signal = loaded["image"][0].numpy()
    mask = loaded["label"][0].numpy().astype(bool)
    background = 0.1 * np.percentile(signal, 99)  # MRI has no absolute scale: relative to the image
    body = signal[signal > background]
    liver = signal[mask]
    low, high = np.percentile(body, [2, 98])
    assert low < liver.mean() < high
    assert (liver <= background).mean() < 0.15  # the mask lies on tissue, not on air
    variation = liver.std() / liver.mean()
    mirrored = signal[_flipped_lr(mask)]
    assert variation < 0.6
    assert variation < mirrored.std() / mirrored.mean()  # the true position is the homogeneous one


def test_chaos_pairing_reproduces_the_organisers_sample_dice(study_cache):
    loaded = study_cache("chaos_ct_1")
    ground = loaded["label"][0].numpy().astype(bool)
    sample = loaded["study"].load_prediction(loaded["image"])[0].numpy().astype(bool)
    dice = 2 * (ground & sample).sum() / (ground.sum() + sample.sum())
    assert dice == pytest.approx(0.978, abs=0.001)  # the organisers' DICE for this submission
    # off by one slice (the 0-based/1-based confusion) would score clearly lower
    shifted = np.roll(sample, 1, axis=-1)
    assert 2 * (ground & shifted).sum() / (ground.sum() + shifted.sum()) < dice - 0.01


def test_chaos_first_dicom_file_is_the_most_cranial_slice(study_cache):
    image = study_cache("chaos_ct_1")["image"]
    # slices run inferior -> superior (axcode 'S'); the PNG pairing is by DICOM number, so file
    # i0000 (z = 1690.5) must sit at the last array index
    assert image.meta["axcodes"][2] == "S"
    assert float(image.affine[2, 3] + image.affine[2, 2] * (image.shape[-1] - 1)) == pytest.approx(1690.5)


def test_ircad_image_0_is_caudal_and_organs_stack_correctly(study_cache):
    loaded = study_cache("ircadb_1")
    study = loaded["study"]
    liver = loaded["label"][0].numpy().astype(bool)
    lung = replace(study, extra={"member": "MASKS_DICOM/rightlung"}).load_label(loaded["image"])
    kidney = replace(study, extra={"member": "MASKS_DICOM/rightkidney"}).load_label(loaded["image"])
    z = {name: np.nonzero(m.any(axis=(0, 1)))[0].mean() for name, m in
         (("liver", liver), ("lung", lung[0].numpy() > 0), ("kidney", kidney[0].numpy() > 0))}
    assert z["kidney"] < z["liver"] < z["lung"]
    assert loaded["image"].meta["axcodes"] == "LPS"


README_GEOMETRY = {
    # path under the data root: (spacing, orientation, shape or None)
    "ct/chaos_ct_1/DICOM_anon": ((0.7266, 0.7266, 2.0), "LPS", (512, 512, 78)),
    "ct/ircadb_1/PATIENT_DICOM": ((0.57, 0.57, 1.6), "LPS", (512, 512, 129)),
    "ct/totalseg/example_ct_dicom": ((0.9766, 0.9766, 2.0), "LPS", (512, 512, 20)),
    "ct/dcmqi/ct-3slice": ((0.8105, 0.8105, 1.0), "LPS", (512, 512, 3)),
    "ct/dcmqi/liver_seg.nrrd": ((0.8105, 0.8105, 1.0), "LPS", (512, 512, 3)),
    "ct/totalseg/example_ct_sm.nii.gz": ((3.0, 3.0, 3.0), "RAS", (122, 101, 30)),
    "ct/totalseg/example_ct.nii.gz": ((3.0, 3.0, 3.0), "RAS", (122, 101, 112)),
    "mr/totalseg/example_mr_sm.nii.gz": ((3.0, 3.0, 3.0), "LPS", (117, 91, 20)),
    **{f"mr/chaos_t2/image_{n}.nii.gz": ((1.25, 1.25, 7.7), "LAS", None) for n in CHAOS_T2_PATIENTS},
}


@pytest.mark.parametrize("relative", list(README_GEOMETRY))
def test_info_reports_the_readme_geometry(relative, shared_data, capsys):
    spacing, orientation, shape = README_GEOMETRY[relative]
    assert cli.main(["info", str(shared_data / relative)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spacing"] == pytest.approx(list(spacing), abs=1e-3)
    assert info["orientation"] == orientation
    if shape is not None:
        assert info["shape"] == list(shape)
    assert info["modality"] in ("CT", "MR", "label")
    if (shared_data / relative).is_dir():
        assert len(info["series"]) == 1 and info["series"][0]["slices"] == info["shape"][2]
        assert info["modality"] == "CT" and info["intensity_range"][0] <= -1000  # decoded to HU


def test_info_works_on_every_nifti_and_names_the_modality(shared_data, capsys):
    files = sorted(shared_data.glob("*/*/*.nii.gz"))
    assert len(files) >= 27
    for path in files:
        assert cli.main(["info", str(path), "--indent", "0"]) == 0, path
        info = json.loads(capsys.readouterr().out)
        expected = "label" if ("seg" in path.name or path.name.startswith("label")) else (
            "MR" if path.parts[-3] == "mr" else "CT")
        assert info["modality"] == expected, path


def test_info_reads_the_dicom_seg_object(shared_data, capsys):
    assert cli.main(["info", str(shared_data / "ct/dcmqi/liver.dcm")]) == 0
    seg = json.loads(capsys.readouterr().out)
    assert seg["modality"] == "SEG" and seg["shape"] == [512, 512, 3]


def test_info_checks_a_label_against_its_image(shared_data, capsys):
    image = shared_data / "ct/totalseg/example_ct_dicom"
    label = shared_data / "ct/totalseg/example_seg_dicom.nii.gz"  # LAS on an LPS series
    assert cli.main(["info", str(image), "--label", str(label)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["label"]["matches_image"] is True and "5" in info["label"]["values"]
    wrong = shared_data / "ct/totalseg/example_seg.nii.gz"  # belongs to another volume
    assert cli.main(["info", str(shared_data / "ct/dcmqi/ct-3slice"), "--label", str(wrong)]) == 2
    assert str(wrong) in capsys.readouterr().err


def test_get_study_names_the_known_studies(shared_data):
    with pytest.raises(Exception) as caught:
        get_study(shared_data, "no_such_study")
    assert "ircadb_1" in str(caught.value)
