"""Own data: MSD / nnU-Net folders and MONAI datalist JSON read as catalogue Studies, and the
`--data PATH --label N` of train, evaluate and report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsemgan.cli import main
from medsemgan.data.catalogue import TEST, TRAIN, Study, get_study
from medsemgan.data.datalist import bundle_items, is_dataset, parse_label, read_dataset, report_test_sets
from medsemgan.errors import InputError


def link(target: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


@pytest.fixture
def nnunet_ct(shared_data, tmp_path) -> Path:
    """nnU-Net v2 folder: TotalSegmentator's small CT (liver = 5) linked in as case tseg_001."""
    root = tmp_path / "Dataset001_Liver"
    link(shared_data / "ct/totalseg/example_ct_sm.nii.gz", root / "imagesTr/tseg_001_0000.nii.gz")
    link(shared_data / "ct/totalseg/example_seg.nii.gz", root / "labelsTr/tseg_001.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1, "liver": 5},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    return root


@pytest.fixture
def msd_mri(shared_data, tmp_path) -> Path:
    """MSD folder: one CHAOS T2 patient labeled for training, a second as an unlabeled test image."""
    root = tmp_path / "Task99_LiverMR"
    chaos = shared_data / "mr/chaos_t2"
    link(chaos / "image_2.nii.gz", root / "imagesTr/chaos_2.nii.gz")
    link(chaos / "label_2.nii.gz", root / "labelsTr/chaos_2.nii.gz")
    link(chaos / "image_15.nii.gz", root / "imagesTs/chaos_15.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "LiverMR", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "liver"},
        "training": [{"image": "./imagesTr/chaos_2.nii.gz", "label": "./labelsTr/chaos_2.nii.gz"}],
        "test": ["./imagesTs/chaos_15.nii.gz"]}))
    return root


def assert_same_label(study: Study, catalogued: Study) -> None:
    ours, theirs = study.load(), catalogued.load()
    np.testing.assert_array_equal(ours["label"].numpy(), theirs["label"].numpy())
    np.testing.assert_allclose(ours["image"].affine.numpy(), theirs["image"].affine.numpy())
    assert int(ours["label"].sum()) > 1000  # a real liver, not an empty mask


# ----------------------------------------------------------------------------- reading (real studies)


def test_nnunet_folder_gives_the_catalogue_study(nnunet_ct, shared_data):
    assert is_dataset(nnunet_ct) and not is_dataset(shared_data)
    dataset = read_dataset(nnunet_ct, label=5)
    assert dataset.kind == "nnunet" and dataset.liver_values == (5,)
    (study,) = dataset.studies
    assert isinstance(study, Study) and study.name == "tseg_001"  # the _0000 channel suffix is not the case
    assert (study.split, study.modality) == (TRAIN, "CT")
    assert_same_label(study, get_study(shared_data, "totalseg_ct_sm"))


def test_a_label_value_the_dataset_does_not_name_is_refused(nnunet_ct):
    with pytest.raises(InputError, match="not in its labels") as err:
        read_dataset(nnunet_ct, label=7)
    assert err.value.path.endswith("dataset.json")


def test_msd_folder_with_mri_and_a_test_image(msd_mri, shared_data):
    dataset = read_dataset(msd_mri)  # --label default 1: CHAOS's liver
    assert dataset.kind == "msd"
    train, test = dataset.studies
    assert (train.name, train.split, train.modality) == ("chaos_2", TRAIN, "MR")
    assert (test.name, test.split, test.label_path) == ("chaos_15", TEST, None)
    assert dataset.test_cases() == [train]  # no labeled test entry: the labeled ones are scored
    assert_same_label(train, get_study(shared_data, "chaos_t2_2"))
    assert [i["case"] for i in bundle_items(msd_mri, labeled=False)] == ["chaos_15"]
    from medsemgan.bundle.evaluation import labeled_datalist
    from medsemgan.bundle.inference import study_datalist

    assert [i["case"] for i in study_datalist(msd_mri)] == ["chaos_15"]  # the bundle's dataset_dir
    (item,) = labeled_datalist(msd_mri)
    assert (item["case"], Path(item["label"])) == ("chaos_2", (msd_mri / "labelsTr/chaos_2.nii.gz").resolve())


def test_monai_datalist_json(shared_data, tmp_path):
    folder = tmp_path / "lists"
    link(shared_data / "ct/totalseg/example_ct_sm.nii.gz", folder / "data/ct.nii.gz")
    link(shared_data / "ct/totalseg/example_seg.nii.gz", folder / "data/ct_seg.nii.gz")
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({
        "training": [{"image": "data/ct.nii.gz", "label": "data/ct_seg.nii.gz"}],
        "validation": [{"image": str(shared_data / "mr/chaos_t2/image_2.nii.gz"), "modality": "T2"}]}))
    dataset = read_dataset(datalist, "5")
    assert dataset.kind == "datalist"
    ct, mr = dataset.studies
    assert (ct.name, ct.split, ct.modality, ct.image_path) == ("ct_seg", TRAIN, "CT", (folder / "data/ct.nii.gz").resolve())
    assert (mr.split, mr.modality, mr.label_path) == (TEST, "MR", None)
    assert_same_label(ct, get_study(shared_data, "totalseg_ct_sm"))


# ----------------------------------------------------------------------------- bad input (no real data)


def write_nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def test_several_label_values_make_one_liver(tmp_path):
    labels = np.zeros((8, 8, 3), dtype=np.uint8)
    labels[1:3, 1:3, 0], labels[4:6, 4:6, 1], labels[6, 6, 2] = 1, 2, 3  # liver, tumour, other organ
    write_nifti(tmp_path / "d/imagesTr/a.nii.gz", np.zeros((8, 8, 3), dtype=np.float32))
    write_nifti(tmp_path / "d/labelsTr/a.nii.gz", labels)
    (study,) = read_dataset(tmp_path / "d", "1,2").studies  # folders without dataset.json
    mask = study.load_label().numpy()[0]
    np.testing.assert_array_equal(mask, np.isin(labels, (1, 2)).astype(np.uint8))
    (only_liver,) = read_dataset(tmp_path / "d").studies
    assert int(only_liver.load_label().sum()) == 4


@pytest.mark.parametrize("value", ["abc", "0", "", "1,x", -2])
def test_bad_label_values(value):
    with pytest.raises(InputError, match="label"):
        parse_label(value)


def test_missing_files_and_bad_json_are_named(tmp_path):
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [{"image": "nowhere.nii.gz", "label": "x.nii.gz"}]}))
    with pytest.raises(InputError, match="does not exist") as err:
        read_dataset(datalist)
    assert err.value.path.endswith("nowhere.nii.gz") and str(datalist) in err.value.problem
    datalist.write_text("{not json")
    with pytest.raises(InputError, match="JSON") as err:
        read_dataset(datalist)
    assert err.value.path == str(datalist)
    datalist.write_text(json.dumps({"training": [{"label": "x.nii.gz"}]}))
    with pytest.raises(InputError, match="needs an 'image'"):
        read_dataset(datalist)
    (tmp_path / "multi").mkdir()
    (tmp_path / "multi/dataset.json").write_text(json.dumps({"modality": {"0": "T2", "1": "ADC"}, "training": []}))
    with pytest.raises(InputError, match="channels"):
        read_dataset(tmp_path / "multi")
    with pytest.raises(InputError, match="does not exist"):
        read_dataset(tmp_path / "absent")


def test_training_config_takes_and_checks_the_label(tmp_path):
    import argparse

    from medsemgan.training.cli_gan import apply_overrides
    from medsemgan.training.config import load_config, normalise

    config = load_config("cpu128")
    assert config["data"]["label"] == 1
    args = argparse.Namespace(data=str(tmp_path), label="1,2")
    assert apply_overrides(config, args)["data"]["label"] == "1,2"
    config["data"]["label"] = "liver"
    with pytest.raises(InputError, match="label"):
        normalise(config, "my.yaml")


# ----------------------------------------------------------------------------- verbs on own data (real studies)


def test_evaluate_scores_predictions_against_the_dataset(nnunet_ct, tmp_path, capsys):
    label = nib.load(str(nnunet_ct / "labelsTr/tseg_001.nii.gz"))
    perfect = (np.asarray(label.dataobj) == 5).astype(np.uint8)
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(perfect, label.affine), str(tmp_path / "pred/tseg_001_0000.nii.gz"))
    out = tmp_path / "scores"
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--data", str(nnunet_ct), "--label", "5",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["metrics"]["dice"]["mean"] == pytest.approx(1.0)
    # the liver value matters: the default 1 (spleen here) against the liver prediction scores ~0
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--data", str(nnunet_ct), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["metrics"]["dice"]["mean"] < 0.05
    capsys.readouterr()
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--data", str(nnunet_ct), "--gt", str(tmp_path)])
    assert code == 2 and "one of them" in capsys.readouterr().err


def test_report_on_own_data_with_precomputed_masks(nnunet_ct, tmp_path):
    from medsemgan.evaluation.report import build_report, parse_config

    label = nib.load(str(nnunet_ct / "labelsTr/tseg_001.nii.gz"))
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image((np.asarray(label.dataobj) == 5).astype(np.uint8), label.affine),
             str(tmp_path / "masks/tseg_001.nii.gz"))
    test_sets = report_test_sets(nnunet_ct, 5)
    assert [(t["key"], t["modality"]) for t in test_sets] == [("Dataset001_Liver_ct", "CT")]
    raw = {"overlays": False, "test_sets": test_sets, "budgets": [{"key": "all"}],
           "methods": [{"key": "given", "kind": "masks", "weights": {"all": str(tmp_path / "masks")}}]}
    result = build_report(parse_config(raw, "test", tmp_path / "report"), progress=False)
    (row,) = result["rows"]
    assert row["status"] == "ok" and row["case"] == "tseg_001" and row["dice"] == pytest.approx(1.0)


def test_train_unet_on_own_data(nnunet_ct, tmp_path, capsys):
    code = main(["train", "unet", "--data", str(nnunet_ct), "--label", "5", "--labeled", "4", "--iterations", "2",
                 "--out", str(tmp_path / "run"), "--device", "cpu", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads((tmp_path / "run" / "unet.json").read_text())
    assert json.dumps(sidecar).count("Dataset001_Liver") >= 1
    assert sidecar["data"]["labeled_slices"] == 4


def test_train_gan_on_own_data(nnunet_ct, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
    from helpers import tiny_config

    from medsemgan.training.run import load_training_tensors

    config = tiny_config(data={"source": "ct", "root": str(nnunet_ct), "label": 5, "labeled_budget": 3,
                               "cache_dir": str(tmp_path / "cache")})
    tensors = load_training_tensors(config, 16)
    assert tensors["labeled_image"].shape == (3, 1, 16, 16) and tensors["labeled_mask"].amax() == 1
    assert tensors["unlabeled"].shape[0] >= 20  # body slices of the 30-slice volume
    assert list((tmp_path / "cache").glob("datalist_tensors_16_*.pt"))  # cached for the next run
    config["data"]["label"] = 1  # spleen: other masks
    other = load_training_tensors(config, 16)
    assert not other["labeled_mask"].equal(tensors["labeled_mask"])


def test_train_gan_runs_on_a_datalist_json(shared_data, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
    from helpers import tiny_config

    from medsemgan.training.run import train_gan

    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [
        {"image": str(shared_data / "ct/totalseg/example_ct_sm.nii.gz"),
         "label": str(shared_data / "ct/totalseg/example_seg.nii.gz")}]}))
    config = tiny_config({"kimg": 0.008}, data={"source": "ct", "root": str(datalist), "label": 5,
                                                 "labeled_budget": 2, "cache_dir": str(tmp_path / "cache")})
    summary = train_gan(config, tmp_path / "run")
    assert (tmp_path / "run" / "generator_ema.pt").is_file() and summary["images_seen"] >= 8
