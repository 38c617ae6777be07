"""DICOM folders as PACS exports them, built from the real files in ../shared/data (symbolic links
in tmp_path, nothing copied into the repository): several series in one folder, a series without
a SeriesInstanceUID (TotalSegmentator's example), a DICOM-SEG beside its CT."""

import json

import pytest

from medsemgan import cli
from medsemgan.data.io import load_image
from medsemgan.data.readers import find_series, list_dicom_series
from medsemgan.errors import InputError

CT_3SLICE = "ct/dcmqi/ct-3slice"  # 3 axial CT slices, SeriesNumber 2, no description
TOTALSEG = "ct/totalseg/example_ct_dicom"  # 20 JPEG-2000 CT slices, empty SeriesInstanceUID
SEG = "ct/dcmqi/liver.dcm"  # the DICOM-SEG of ct-3slice (modality SEG, one multi-frame file)


def link_series(folder, shared_data, *sources):
    """``folder`` holding symbolic links to every file of each source (a file or a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        source = shared_data / source
        for path in ([source] if source.is_file() else sorted(source.iterdir())):
            (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture
def two_series(shared_data, tmp_path):
    return link_series(tmp_path / "study", shared_data, CT_3SLICE, TOTALSEG)


def _info(capsys, *argv):
    code = cli.main(["info", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured


def test_info_lists_every_series_of_a_folder_and_exits_0(two_series, capsys):
    code, out = _info(capsys, two_series)
    assert code == 0, out.err
    info = json.loads(out.out)
    assert info["format"] == "dicom-folder" and info["n_series"] == 2
    by_slices = {s["slices"]: s for s in info["series"]}
    no_uid, numbered = by_slices[20], by_slices[3]
    assert (no_uid["uid"], no_uid["select"]) == ("", "none")
    assert no_uid["number"] is None and no_uid["description"] == "CT Body 3.0"
    assert numbered["uid"].startswith("1.2.392.") and numbered["number"] == 2
    assert numbered["select"] == numbered["uid"]
    assert {s["modality"] for s in info["series"]} == {"CT"}
    assert no_uid["orientation"] == numbered["orientation"] == "axial"
    assert no_uid["volume"] and numbered["volume"]
    # the listed spacing is the one the volume is read with
    for entry, choice in ((no_uid, "none"), (numbered, "2")):
        volume = load_image(two_series, series_uid=choice)
        assert volume.shape[-1] == entry["slices"]
        assert entry["spacing"] == pytest.approx(volume.meta["spacing"], abs=1e-3)


def test_the_series_without_uid_is_selectable_by_none(two_series, capsys):
    volume = load_image(two_series, series_uid="none")
    assert tuple(volume.shape) == (1, 512, 512, 20) and volume.meta["series_uid"] == ""
    assert volume.meta["series_description"] == "CT Body 3.0"
    code, out = _info(capsys, two_series, "--series", "none")
    assert code == 0, out.err
    info = json.loads(out.out)
    assert info["format"] == "dicom-series" and info["shape"] == [512, 512, 20]
    assert info["series_uid"] == "" and len(info["series"]) == 2


def test_a_series_is_selectable_by_uid_or_number(two_series):
    listed = list_dicom_series(two_series)
    numbered = next(s for s in listed if s.uid)
    by_uid = load_image(two_series, series_uid=numbered.uid)
    by_number = load_image(two_series, series_uid="2")
    assert by_uid.shape == by_number.shape == (1, 512, 512, 3)
    assert by_number.meta["series_uid"] == numbered.uid and by_number.meta["series_number"] == "2"
    assert find_series(listed, "7") == [] and find_series(listed, "1.2.3") == []


def test_an_unknown_or_missing_choice_lists_the_series(two_series, capsys):
    with pytest.raises(InputError) as caught:
        load_image(two_series)
    assert "holds 2 DICOM series" in caught.value.problem
    assert "no UID (--series none)" in caught.value.problem and "'CT Body 3.0'" in caught.value.problem
    code, out = _info(capsys, two_series, "--series", "7")
    assert code == 2 and out.out == ""
    assert str(two_series) in out.err and "series '7' not found" in out.err and "#2" in out.err


def test_a_seg_object_beside_its_ct_is_listed_as_no_volume(shared_data, tmp_path, capsys):
    folder = link_series(tmp_path / "with_seg", shared_data, CT_3SLICE, SEG)
    code, out = _info(capsys, folder)
    assert code == 0, out.err
    series = {s["modality"]: s for s in json.loads(out.out)["series"]}
    assert set(series) == {"CT", "SEG"}
    assert series["CT"]["volume"] and not series["SEG"]["volume"]
    assert series["SEG"]["description"] == "Liver Segmentation" and series["SEG"]["slices"] == 3
