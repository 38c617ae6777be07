import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from bundle_fixtures import (  # noqa: E402
    make_tiny_bundle,
    write_label_nifti,
    write_phantom_dicom,
    write_phantom_nifti,
)


@pytest.fixture(autouse=True)
def _tiny_models_one_thread(one_thread):
    """Every test here uses one torch thread (tests/conftest.py::one_thread says why)."""


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Read-only use: tests that write into a bundle make their own copy."""
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "medsemgan_liver")


@pytest.fixture(scope="session")
def studies_dir(tmp_path_factory) -> Path:
    """A NIfTI study and a DICOM series folder (what `segment` and inference.json both take)."""
    root = tmp_path_factory.mktemp("studies")
    write_phantom_nifti(root / "phantom_ct.nii.gz")
    write_phantom_dicom(root / "phantom_dicom")
    return root


@pytest.fixture(scope="session")
def labeled_dir(tmp_path_factory) -> Path:
    """images/ + labels/ as evaluate.json reads them (label names carry a role word on purpose)."""
    root = tmp_path_factory.mktemp("labeled")
    image, mask = write_phantom_nifti(root / "images" / "case_1.nii.gz", seed=4)
    write_label_nifti(root / "labels" / "case_1_seg.nii.gz", mask, image)
    image, mask = write_phantom_nifti(root / "images" / "case_2.nii.gz", shape=(34, 40, 4), seed=5)
    write_label_nifti(root / "labels" / "case_2_seg.nii.gz", mask, image)
    return root
