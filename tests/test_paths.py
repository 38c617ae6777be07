"""paths.portable_path: the one rule by which records that leave this machine name files."""

from pathlib import Path

from medsemgan.paths import REPO_DIR, portable_path


def test_portable_path_prefers_the_given_folders_then_the_data_root_then_the_repository(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("MEDSEMGAN_DATA", str(data))
    bundle = tmp_path / "bundle"
    assert portable_path(bundle / "models" / "generator.pt", (bundle,)) == "models/generator.pt"
    assert portable_path(data / "mr" / "image_2.nii.gz") == "DATA/mr/image_2.nii.gz"
    assert portable_path(data / "mr" / "image_2.nii.gz", (data,)) == "mr/image_2.nii.gz"  # given folders first
    assert portable_path(str(REPO_DIR / "medsemgan" / "configs" / "cpu128.yaml")) == "medsemgan/configs/cpu128.yaml"


def test_portable_path_outside_every_known_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEMGAN_DATA", str(tmp_path / "absent"))  # no data root
    assert portable_path("/elsewhere/x.nii.gz") == "/elsewhere/x.nii.gz"
    assert portable_path("/opt/scratch/gan_1/checkpoint.pt", tail=True) == "gan_1/checkpoint.pt"
    assert portable_path(Path("notes") / "a b.txt", tail=True) == "notes/a b.txt"  # relative: names no machine


def test_portable_path_resolves_a_relative_path_from_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEMGAN_DATA", str(tmp_path))
    (tmp_path / "ct").mkdir()
    monkeypatch.chdir(tmp_path / "ct")
    assert portable_path("../ct/volume.nii.gz") == "DATA/ct/volume.nii.gz"
