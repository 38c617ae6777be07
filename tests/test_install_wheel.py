"""The wheel, as a user gets it: built from this checkout, installed in a fresh venv, used from
another folder with no network (pip --no-index, dead proxies): `install-bundle` puts the shipped
bundle in the user folder, `segment` finds it there and compiles the ops from the installed sources.

Slow (about a minute): excluded from `make test`, run by `.ci/run`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsemgan.paths import REPO_BUNDLE_DIR, REPO_DIR

pytestmark = pytest.mark.slow

SOURCES = ("medsemgan", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md")
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "PIP_NO_INDEX": "1", "no_proxy": "", "NO_PROXY": ""}


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv bin, env) of a fresh venv holding only the wheel (dependencies come from
    the development venv through a .pth, so nothing is downloaded)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # the working tree's package, without build outputs
        source = REPO_DIR / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(source, src / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDSEMGAN_BUNDLE", "PYTHON", "VIRTUAL_ENV"))}
    env.update(OFFLINE, TORCH_HOME=str(tmp / "torch_home"))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", str(tmp / "dist"), str(src)], tmp, env)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp / "dist").glob("medsemgan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("medsemgan/ops/csrc/cpu_ops.cpp", "medsemgan/ops/csrc/bias_act.h",
                     "medsemgan/ops/csrc/upfirdn2d_kernel.cu", "medsemgan/configs/cpu128.yaml",
                     "medsemgan/configs/report.yaml"):
        assert required in names, f"{required} missing from {wheel.name}"
    assert not [n for n in names if n.endswith(".pt")], "weights belong in the bundle, not the wheel"

    venv = tmp / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env).stdout.strip()
    Path(site, "_medsemgan_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    got = run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp, env)
    assert got.returncode == 0, got.stdout + got.stderr
    return python, venv / "bin", env, tmp


def test_wheel_installs_and_segments_the_sample_offline_from_another_folder(installed):
    python, bin_dir, env, tmp = installed
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import medsemgan, medsemgan.ops.loader as l, medsemgan.paths as p; "
                 "print(medsemgan.__file__); print(l.SOURCE_DIR); print(p.bundle_dir())"], elsewhere, env)
    package, sources, bundle = where.stdout.split()
    assert str(tmp / "venv") in package and str(tmp / "venv") in sources, where.stdout + where.stderr
    assert bundle == str(tmp / "torch_home" / "hub" / "bundle" / "medsemgan_liver")  # not the checkout

    sample = elsewhere / "study.nii.gz"
    shutil.copy2(REPO_BUNDLE_DIR / "sample" / "images" / "sample_ct.nii.gz", sample)
    segment = [str(bin_dir / "medsemgan"), "segment", "-i", sample.name, "-o", "out", "--steps", "2",
               "--device", "cpu", "--no-progress"]
    before = run(segment, elsewhere, env)  # no bundle yet: a clear error, no mask
    assert before.returncode == 2 and "install-bundle" in before.stderr, before.stderr
    assert not (elsewhere / "out" / "study.nii.gz").exists()

    installed_bundle = run([str(bin_dir / "medsemgan"), "install-bundle", str(REPO_BUNDLE_DIR)], elsewhere, env)
    assert installed_bundle.returncode == 0, installed_bundle.stderr
    assert json.loads(installed_bundle.stdout)["bundle"] == bundle
    assert not list(Path(bundle, "models").glob("unet_*"))

    done = run(segment, elsewhere, env)
    assert done.returncode == 0, done.stderr
    assert "could not be built" not in done.stderr, done.stderr  # ops compiled from the wheel's sources
    mask_image = nib.load(str(elsewhere / "out" / "study.nii.gz"))
    image = nib.load(str(sample))
    assert mask_image.shape == image.shape
    np.testing.assert_allclose(mask_image.affine, image.affine, atol=1e-5)
    mask = np.asarray(mask_image.dataobj) > 0
    label = np.asarray(nib.load(str(REPO_BUNDLE_DIR / "sample" / "labels" / "sample_ct.nii.gz")).dataobj) > 0
    assert dice(mask, label) > 0.6  # the demo's sample reaches ~0.8 at K=20
