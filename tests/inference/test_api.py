"""``from medsemgan import load_model, segment``: every input kind, the output on the input's grid,
a cheap ``import medsemgan``, and the example of docs/api.md run as written."""

import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medsemgan import load_model, segment
from medsemgan.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def test_import_medsemgan_does_not_import_torch_or_monai():
    code = ("import sys, medsemgan; heavy = [m for m in ('torch', 'monai', 'medsemgan.api') if m in sys.modules]; "
            "print(heavy); from medsemgan import load_model, segment; print(callable(segment), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True True"]


def test_every_input_kind_gives_the_same_mask_on_its_own_grid(bundle, small_nifti):
    model = load_model(bundle, device="cpu")
    image = nib.load(small_nifti)
    array = image.get_fdata(dtype=np.float32)
    kwargs = dict(modality="CT", steps=1, seed=3)

    from_path, prob, extras = segment(model, small_nifti, return_probability=True, return_extras=True, **kwargs)
    assert isinstance(from_path, nib.Nifti1Image) and from_path.get_data_dtype() == np.uint8
    assert from_path.shape == image.shape and np.array_equal(from_path.affine, image.affine)
    reference = np.asarray(from_path.dataobj)
    assert set(np.unique(reference).tolist()) <= {0, 1}
    p = prob.get_fdata()
    assert prob.get_data_dtype() == np.float32 and p.min() >= 0 and p.max() <= 1
    assert np.array_equal(reference, (p > 0.5).astype(np.uint8))
    voxel_ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000
    assert extras["liver_volume_ml"] == pytest.approx(reference.sum() * voxel_ml, abs=1e-3)
    assert extras["modality"] == "CT" and "probability" not in extras

    from_nib = segment(model, image, **kwargs)
    assert isinstance(from_nib, nib.Nifti1Image) and np.array_equal(np.asarray(from_nib.dataobj), reference)

    from_array = segment(model, array, affine=image.affine, **kwargs)
    assert isinstance(from_array, np.ndarray) and from_array.dtype == np.uint8
    assert np.array_equal(from_array, reference)
    channel_first = segment(model, torch.from_numpy(array)[None], affine=image.affine, **kwargs)
    assert channel_first.shape == (1, *array.shape) and np.array_equal(channel_first[0], reference)

    meta = MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(image.affine))
    from_meta, meta_prob = segment(model, meta, return_probability=True, **kwargs)
    assert isinstance(from_meta, MetaTensor) and from_meta.shape == meta.shape
    assert torch.equal(from_meta.affine.double(), torch.as_tensor(image.affine))
    assert np.array_equal(from_meta[0].numpy(), reference) and meta_prob.dtype == torch.float32


def test_an_array_without_affine_or_a_bad_model_is_a_clear_error(bundle, small_nifti):
    model = load_model(bundle, device="cpu")
    with pytest.raises(InputError, match="affine"):
        segment(model, np.zeros((8, 8, 4), np.float32))
    with pytest.raises(InputError, match="3-D volume"):
        segment(model, np.zeros((8, 8), np.float32), affine=np.eye(4))
    with pytest.raises(InputError, match="load_model"):
        segment(object(), small_nifti)
    with pytest.raises(InputError, match="does not exist"):
        segment(model, small_nifti.parent / "missing.nii.gz")


def test_the_unet_baseline_runs_through_the_same_call(small_nifti, tmp_path):
    from medsemgan.training.unet import build_unet

    arch = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    torch.manual_seed(0)
    weights = tmp_path / "unet.pt"
    torch.save(build_unet(arch).state_dict(), weights)
    weights.with_suffix(".json").write_text(f'{{"architecture": {arch}, "resolution": 32}}'.replace("'", '"'))
    model = load_model(unet_weights=weights, device="cpu")
    mask, extras = segment(model, small_nifti, modality="CT", return_extras=True)
    assert mask.shape == nib.load(small_nifti).shape and "liver_volume_ml" in extras
    assert "out_of_domain" not in extras  # the U-Net has no reconstruction to judge


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_docs_api_example_runs_as_written(monkeypatch, capsys):
    """docs/api.md's example block, executed from the repository root with the shipped model."""
    blocks = _python_blocks((REPO / "docs" / "api.md").read_text())
    example = [b for b in blocks if "load_model(" in b and "segment(" in b]
    assert len(example) == 1, "docs/api.md should hold one runnable example"
    if not (REPO / "bundles" / "medsemgan_liver" / "models" / "generator.pt").is_file():
        pytest.skip("the shipped bundle weights are not in this checkout")
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(example[0], "docs/api.md", "exec"), namespace)  # noqa: S102 - the docs' own code
    printed = capsys.readouterr().out
    assert re.search(r"liver: \d+ mL in \d+ voxels", printed), printed
    assert namespace["extras"]["liver_volume_ml"] > 0
    assert not list(REPO.glob("sample_mask.nii.gz"))  # the example writes nothing
