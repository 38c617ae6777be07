"""inference.json: properties, NIfTI + DICOM input, input geometry, identical to `medsemgan segment`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bundle_fixtures import load_nifti

from medsemgan.data.io import load_image


def _run_inference(bundle, dataset_dir, output_dir, **override):
    from bundle_fixtures import run_workflow

    workflow, missing = run_workflow(bundle, "inference.json", "infer", dataset_dir=str(dataset_dir),
                                     output_dir=str(output_dir), device="cpu", **override)
    assert missing == [], f"inference.json lacks required properties: {missing}"
    workflow.run()
    workflow.finalize()
    return workflow


def _segment_cli(bundle, dataset_dir, output_dir, *extra):
    from medsemgan.cli import main

    return main(["segment", "-i", str(dataset_dir), "-o", str(output_dir), "--bundle", str(bundle),
                 "--device", "cpu", "--no-progress", *extra])


@pytest.fixture(scope="module")
def bundle_run(tiny_bundle, studies_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle_out")
    _run_inference(tiny_bundle, studies_dir, out)
    return out


def test_every_study_gets_a_mask_in_its_input_geometry(bundle_run, studies_dir):
    for case, source in (("phantom_ct", studies_dir / "phantom_ct.nii.gz"),
                         ("phantom_dicom", studies_dir / "phantom_dicom")):
        mask, affine = load_nifti(bundle_run / f"{case}.nii.gz")
        image = load_image(source)
        assert mask.dtype == np.uint8
        assert mask.shape == tuple(image.shape[1:])
        np.testing.assert_allclose(affine, image.affine.numpy(), atol=1e-4)
        assert set(np.unique(mask)) <= {0, 1}
        # A mask of all zeros or all ones would make the comparisons below meaningless.
        assert 0 < mask.sum() < mask.size, case
        record = json.loads((bundle_run / f"{case}.json").read_text())
        assert record["modality"] == "CT" and record["liver_voxels"] == int(mask.sum())
        assert len(record["recon_mse"]) == mask.shape[2]
        assert len(record["structure_error"]) == mask.shape[2]
        # the verdict segment_volume gives, from the model configuration's signal and threshold
        assert record["ood_signal"] == "structure"
        assert record["ood_score"] == pytest.approx(record["mean_structure_error"])
        assert record["out_of_domain"] == (record["ood_score"] > record["ood_threshold"])


def test_masks_identical_to_medsemgan_segment(bundle_run, tiny_bundle, studies_dir, tmp_path):
    assert _segment_cli(tiny_bundle, studies_dir, tmp_path) == 0
    for case in ("phantom_ct", "phantom_dicom"):
        bundle_mask, bundle_affine = load_nifti(bundle_run / f"{case}.nii.gz")
        cli_mask, cli_affine = load_nifti(tmp_path / f"{case}.nii.gz")
        assert np.array_equal(bundle_mask, cli_mask), case
        assert np.array_equal(bundle_affine, cli_affine), case


def test_overrides_match_segment_options(tiny_bundle, studies_dir, tmp_path):
    """--steps/--seed/--batch_size reach the same options as the segment flags (and change the
    result, so the override is not silently ignored)."""
    single = tmp_path / "in"
    single.mkdir()
    (single / "phantom_ct.nii.gz").symlink_to(studies_dir / "phantom_ct.nii.gz")
    workflow = _run_inference(tiny_bundle, single, tmp_path / "bundle", steps=6, seed=7, batch_size=2)
    options = workflow.inferer.options
    assert (options.steps, options.seed, workflow.inferer.batch_size) == (6, 7, 2)
    assert _segment_cli(tiny_bundle, single, tmp_path / "cli", "--steps", "6", "--seed", "7",
                        "--batch-size", "2") == 0
    bundle_mask, _ = load_nifti(tmp_path / "bundle" / "phantom_ct.nii.gz")
    cli_mask, _ = load_nifti(tmp_path / "cli" / "phantom_ct.nii.gz")
    assert np.array_equal(bundle_mask, cli_mask)
    encoder_only = _run_inference(tiny_bundle, single, tmp_path / "k0", steps="0")  # as the CLI passes it
    assert encoder_only.inferer.options.steps == 0
    k0_mask, _ = load_nifti(tmp_path / "k0" / "phantom_ct.nii.gz")
    assert not np.array_equal(k0_mask, bundle_mask)


def test_missing_weights_is_a_clear_error(tmp_path, studies_dir):
    from bundle_fixtures import copy_bundle, run_workflow

    from medsemgan.errors import InputError

    empty = copy_bundle(tmp_path / "bundle")
    with pytest.raises(Exception) as info:
        run_workflow(empty, "inference.json", "infer", dataset_dir=str(studies_dir),
                     output_dir=str(tmp_path / "out"), device="cpu")
    chain, err = [], info.value
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    found = [e for e in chain if isinstance(e, InputError)]
    assert found and "generator.pt" in str(found[0]) and "no trained generator weights" in str(found[0])


def test_verify_net_in_out(tiny_bundle):
    """MONAI's shape check of network_def against network_data_format (the tiny model is 32 px;
    the shipped configuration's 128 px is what metadata.json states)."""
    from monai.bundle import verify_net_in_out

    shape = {"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32],
             "_meta_#network_data_format#outputs#pred#spatial_shape": [32, 32]}
    verify_net_in_out(net_id="network_def", meta_file=str(tiny_bundle / "configs" / "metadata.json"),
                      config_file=str(tiny_bundle / "configs" / "inference.json"), bundle_root=str(tiny_bundle),
                      device="cpu", **shape)
    wrong = {**shape, "_meta_#network_data_format#outputs#pred#num_channels": 2}
    with pytest.raises(ValueError, match="[Oo]utput channel"):
        verify_net_in_out(net_id="network_def", meta_file=str(tiny_bundle / "configs" / "metadata.json"),
                          config_file=str(tiny_bundle / "configs" / "inference.json"),
                          bundle_root=str(tiny_bundle), device="cpu", **wrong)


def test_identical_with_the_shipped_inference_options(tiny_bundle, studies_dir, tmp_path):
    """cpu128 infers with bf16 autocast and per-slice early stopping: identity must hold there too."""
    import shutil

    import yaml

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    config = yaml.safe_load((bundle / "configs" / "model.yaml").read_text())
    config["inference"].update(steps=5, bf16=True, early_stop_patience=1, batch_size=3)
    (bundle / "configs" / "model.yaml").write_text(yaml.safe_dump(config))
    workflow = _run_inference(bundle, studies_dir, tmp_path / "bundle_out")
    options = workflow.inferer.options
    assert options.bf16 and options.early_stop_patience == 1 and workflow.inferer.batch_size == 3
    assert _segment_cli(bundle, studies_dir, tmp_path / "cli_out") == 0
    for case in ("phantom_ct", "phantom_dicom"):
        bundle_mask, _ = load_nifti(tmp_path / "bundle_out" / f"{case}.nii.gz")
        cli_mask, _ = load_nifti(tmp_path / "cli_out" / f"{case}.nii.gz")
        assert 0 < bundle_mask.sum() < bundle_mask.size
        assert np.array_equal(bundle_mask, cli_mask), case


def test_worker_processes_give_the_same_masks(bundle_run, tiny_bundle, studies_dir, tmp_path):
    """With --num_workers 1 preprocessing runs in a worker process and Invertd in this one: the
    per-modality pipelines must exist before the fork for the inverse to find them."""
    _run_inference(tiny_bundle, studies_dir, tmp_path, num_workers=1)
    for case in ("phantom_ct", "phantom_dicom"):
        worker_mask, worker_affine = load_nifti(tmp_path / f"{case}.nii.gz")
        main_mask, main_affine = load_nifti(bundle_run / f"{case}.nii.gz")
        assert np.array_equal(worker_mask, main_mask), case
        assert np.array_equal(worker_affine, main_affine), case


def test_series_and_probability_overrides_on_a_multi_series_folder(tiny_bundle, shared_data, tmp_path):
    """inference.json's `series` and `save_prob`: the cases, names and masks `medsemgan segment`
    gives on a folder holding two real CT series (one without a SeriesInstanceUID)."""
    import nibabel as nib

    study = tmp_path / "in" / "study"
    study.mkdir(parents=True)
    for source in ("ct/dcmqi/ct-3slice", "ct/totalseg/example_ct_dicom"):
        for path in sorted((shared_data / source).iterdir()):
            (study / path.name).symlink_to(path)
    every = _run_inference(tiny_bundle, study, tmp_path / "every", encoder_only=True)
    assert sorted(p.name for p in (tmp_path / "every").glob("*.nii.gz")) == [
        "study_CT_Body_3_0.nii.gz", "study_s2.nii.gz"]
    assert not list((tmp_path / "every").glob("*_prob.nii.gz"))  # off by default
    _run_inference(tiny_bundle, study, tmp_path / "one", encoder_only=True, series="none", save_prob=True)
    assert sorted(p.name for p in (tmp_path / "one").glob("*.nii.gz")) == ["study.nii.gz", "study_prob.nii.gz"]
    mask, affine = load_nifti(tmp_path / "one" / "study.nii.gz")
    prob = nib.load(tmp_path / "one" / "study_prob.nii.gz")
    assert mask.shape == prob.shape == (512, 512, 20) and prob.get_data_dtype() == np.float32
    assert np.array_equal(prob.affine, affine)
    assert np.array_equal(mask, (prob.get_fdata() > 0.5).astype(np.uint8))
    assert _segment_cli(tiny_bundle, study, tmp_path / "cli", "--encoder-only", "--series", "none") == 0
    cli_mask, _ = load_nifti(tmp_path / "cli" / "study.nii.gz")
    assert np.array_equal(cli_mask, mask)
    del every
