"""Finding and installing a bundle: `--bundle` / $MEDSEMGAN_BUNDLE / checkout / user folder,
`large_files.yml` sha256 lists, `medsemgan install-bundle`, portable provenance."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from medsemgan import paths
from medsemgan.bundle.install import install_bundle
from medsemgan.bundle.large_files import read_large_files, verify_bundle, weight_files, write_large_files
from medsemgan.cli import main
from medsemgan.errors import InputError


def make_bundle(root: Path, payload: bytes = b"weights-1") -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "model.yaml").write_text("model: {}\n")
    (root / "models" / "generator.pt").write_bytes(payload)
    (root / "models" / "encoder.pt").write_bytes(payload + b"-enc")
    (root / "eval").mkdir()
    (root / "eval" / "old_output.nii.gz").write_bytes(b"x")  # local outputs are not installed
    write_large_files(root)
    return root


@pytest.fixture
def user_home(tmp_path, monkeypatch):
    """An empty torch hub (the user bundle folder lives there) and no $MEDSEMGAN_BUNDLE."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(paths.ENV_BUNDLE, raising=False)
    return tmp_path / "torch_home" / "hub" / "bundle" / paths.BUNDLE_NAME


# ----------------------------------------------------------------------------- the shipped bundle


def test_committed_large_files_list_every_weight_with_its_sha256():
    entries = read_large_files(paths.REPO_BUNDLE_DIR)
    assert sorted(e["path"] for e in entries) == weight_files(paths.REPO_BUNDLE_DIR)
    assert {"models/generator.pt", "models/encoder.pt", "models/encoder_mr.pt"} <= {e["path"] for e in entries}
    checked = verify_bundle(paths.REPO_BUNDLE_DIR, entries)
    provenance = json.loads((paths.REPO_BUNDLE_DIR / "models" / "provenance.json").read_text())
    for item in checked:  # the two records of each file agree
        assert provenance[Path(item["path"]).name]["sha256"] == item["sha256"]


def test_committed_provenance_names_no_folder_of_the_exporting_machine():
    text = (paths.REPO_BUNDLE_DIR / "models" / "provenance.json").read_text()

    def strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    absolute = [s for s in strings(json.loads(text)) if any(os.path.isabs(w) for w in s.split(" "))]
    assert absolute == []
    assert "/work/" not in text and str(Path.home()) not in text


def test_the_report_baselines_live_beside_the_bundle_not_in_it():
    assert not list((paths.REPO_BUNDLE_DIR / "models").glob("unet_*"))
    assert (paths.BASELINES_DIR / "unet_baseline_all.pt").is_file()
    assert (paths.BASELINES_DIR / "unet_baseline_all.json").is_file()
    report = (paths.CONFIG_DIR / "report.yaml").read_text()
    assert "baselines/unet_baseline_all.pt" in report and "models/unet_" not in report


def test_op_sources_are_package_data():
    from medsemgan.ops import loader

    assert loader.SOURCE_DIR == paths.PACKAGE_DIR / "ops" / "csrc"
    for name in loader.HEADERS + loader.SOURCES["cpu"] + loader.SOURCES["cuda"] + loader.EXTRA_HEADERS["cuda"]:
        assert (loader.SOURCE_DIR / name).is_file(), name
    setup = (paths.REPO_DIR / "setup.cfg").read_text()
    assert "ops/csrc/*.cpp" in setup and "ops/csrc/*.cu" in setup and "ops/csrc/*.h" in setup


# ----------------------------------------------------------------------------- where the bundle is found


def test_bundle_dir_order(tmp_path, user_home, monkeypatch):
    assert paths.bundle_dir(tmp_path / "explicit") == tmp_path / "explicit"  # given: used even if missing
    monkeypatch.setattr(paths, "REPO_BUNDLE_DIR", tmp_path / "no_checkout")
    assert paths.bundle_dir() == user_home  # nothing installed: the user folder (install-bundle target)
    monkeypatch.setattr(paths, "REPO_BUNDLE_DIR", make_bundle(tmp_path / "checkout"))
    assert paths.bundle_dir() == tmp_path / "checkout"
    monkeypatch.setenv(paths.ENV_BUNDLE, str(tmp_path / "from_env"))
    assert paths.bundle_dir() == tmp_path / "from_env"
    from medsemgan.paths import DEFAULT_BUNDLE_DIR  # resolved when read

    assert DEFAULT_BUNDLE_DIR == tmp_path / "from_env"
    assert paths.bundle_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_user_folder_is_monai_bundle_download_default(user_home):
    from monai.bundle.scripts import _process_bundle_dir  # MONAI's own default for `download`

    assert Path(_process_bundle_dir(None)) / paths.BUNDLE_NAME == user_home


def test_missing_bundle_error_says_how_to_get_one(tmp_path, user_home, monkeypatch, capsys):
    monkeypatch.setattr(paths, "REPO_BUNDLE_DIR", tmp_path / "no_checkout")
    from medsemgan.inference.model import SegmentationModel

    with pytest.raises(InputError, match="install-bundle") as err:
        SegmentationModel.from_bundle()
    assert err.value.path == str(user_home)


# ----------------------------------------------------------------------------- install-bundle


def test_install_from_a_folder_into_the_user_folder(tmp_path, user_home, monkeypatch, capsys):
    monkeypatch.setattr(paths, "REPO_BUNDLE_DIR", tmp_path / "no_checkout")  # as from an installed wheel
    assert paths.bundle_dir() == user_home and not user_home.exists()
    source = make_bundle(tmp_path / "src")
    assert main(["install-bundle", str(source)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["action"] == "installed" and Path(result["bundle"]) == user_home
    assert (user_home / "models" / "generator.pt").read_bytes() == b"weights-1"
    assert (user_home / "large_files.yml").is_file() and not (user_home / "eval").exists()
    assert paths.bundle_dir() == user_home
    # again: nothing to do; --verify checks the installed copy
    assert main(["install-bundle", str(source)]) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "already installed (same weights)"
    assert main(["install-bundle", "--verify", str(user_home)]) == 0
    assert len(json.loads(capsys.readouterr().out)["files"]) == 2


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "file_url"])
def test_install_from_an_archive_or_file_url(tmp_path, kind):
    source = make_bundle(tmp_path / "pack" / "medsemgan_liver")
    if kind == "zip":
        archive = tmp_path / "bundle.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for path in source.rglob("*"):
                zf.write(path, path.relative_to(tmp_path / "pack"))
        given = str(archive)
    elif kind == "tar.gz":
        archive = tmp_path / "bundle.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(source, arcname="medsemgan_liver")
        given = str(archive)
    else:
        given = source.as_uri()
    result = install_bundle(given, tmp_path / "dest")
    assert result["action"] == "installed"
    assert (tmp_path / "dest" / "models" / "encoder.pt").read_bytes() == b"weights-1-enc"
    assert verify_bundle(tmp_path / "dest")


def test_a_corrupt_source_is_refused_and_nothing_is_written(tmp_path, capsys):
    source = make_bundle(tmp_path / "src")
    (source / "models" / "encoder.pt").write_bytes(b"tampered")
    code = main(["install-bundle", str(source), "--dest", str(tmp_path / "dest")])
    err = capsys.readouterr().err
    assert code == 2 and "encoder.pt" in err and "sha256" in err
    assert not (tmp_path / "dest").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary folder left behind


def test_an_unlisted_weight_file_or_missing_list_is_refused(tmp_path):
    source = make_bundle(tmp_path / "src")
    (source / "models" / "extra.pt").write_bytes(b"?")
    with pytest.raises(InputError, match="not listed") as err:
        install_bundle(source, tmp_path / "dest")
    assert err.value.path.endswith("extra.pt")
    (source / "models" / "extra.pt").unlink()
    (source / "large_files.yml").unlink()
    with pytest.raises(InputError, match="large_files.yml|missing"):
        install_bundle(source, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_a_different_installed_bundle_needs_force(tmp_path):
    dest = tmp_path / "dest"
    install_bundle(make_bundle(tmp_path / "v1", b"one"), dest)
    newer = make_bundle(tmp_path / "v2", b"two")
    with pytest.raises(InputError, match="--force"):
        install_bundle(newer, dest)
    assert (dest / "models" / "generator.pt").read_bytes() == b"one"  # untouched
    assert install_bundle(newer, dest, force=True)["action"] == "installed"
    assert (dest / "models" / "generator.pt").read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "v1", "v2"]


def test_not_a_bundle_and_missing_sources_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a bundle"):
        install_bundle(tmp_path / "empty", tmp_path / "dest")
    with pytest.raises(InputError, match="does not exist") as err:
        install_bundle(tmp_path / "nowhere", tmp_path / "dest")
    assert "nowhere" in err.value.path
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="archive"):
        install_bundle(tmp_path / "notes.txt", tmp_path / "dest")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(InputError, match="outside"):
        install_bundle(evil, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "dest").exists()


def test_the_shipped_bundle_installs_and_loads_from_the_user_folder(tmp_path, user_home, monkeypatch):
    """The real bundle, installed as a user of the wheel would, found with no --bundle."""
    install_bundle(paths.REPO_BUNDLE_DIR, None)
    assert not (user_home / "models" / "unet_baseline_all.pt").exists()
    monkeypatch.setattr(paths, "REPO_BUNDLE_DIR", tmp_path / "no_checkout")
    from medsemgan.inference.model import SegmentationModel

    model = SegmentationModel.from_bundle()
    assert set(model.modality_encoders) == {"MR"}
    shutil.rmtree(user_home)


# ----------------------------------------------------------------------------- provenance


def test_portable_paths(tmp_path):
    from medsemgan.bundle.export import portable

    bundle = tmp_path / "b"
    record = {"generator": f"{bundle}/models/generator.pt sha256:abc", "source": "runs/x/checkpoint.pt",
              "config_source": str(paths.CONFIG_DIR / "cpu128.yaml"), "elsewhere": "/opt/scratch/gan_1/checkpoint.pt",
              "nested": [{"p": f"{bundle}/models/encoder.pt"}], "n": 3}
    assert portable(record, bundle) == {
        "generator": "models/generator.pt sha256:abc", "source": "runs/x/checkpoint.pt",
        "config_source": "medsemgan/configs/cpu128.yaml", "elsewhere": "gan_1/checkpoint.pt",
        "nested": [{"p": "models/encoder.pt"}], "n": 3}
