"""train.json, train_encoder.json, multi_gpu_train.json on tiny models and synthetic slices."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from bundle_fixtures import BUNDLE_SRC, REPO, copy_bundle, make_tiny_bundle, run_workflow, write_tiny_config

PROPERTIES = BUNDLE_SRC / "configs" / "train_properties.json"


def _train(bundle, config, **override):
    workflow, missing = run_workflow(bundle, config, "train", properties_path=PROPERTIES, device="cpu",
                                     **override)
    assert missing == [], f"{config} lacks required properties: {missing}"
    workflow.run()
    workflow.finalize()
    return workflow.parser.get_parsed_content("train#trainer").summary


def _state_dict(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())
    return state


def test_train_gan_resumes_and_exports_into_the_bundle(tmp_path):
    bundle = copy_bundle(tmp_path / "bundle")
    config = write_tiny_config(tmp_path / "tiny.yaml")
    run_dir = tmp_path / "gan"
    first = _train(bundle, "train.json", training_config=str(config), output_dir=str(run_dir),
                   max_steps=1, export_weights="true")
    assert (first["steps"], first["finished"]) == (1, False)
    assert (run_dir / "checkpoint.pt").is_file()
    assert not (bundle / "models" / "generator.pt").exists()  # only a finished run is exported
    second = _train(bundle, "train.json", training_config=str(config), output_dir=str(run_dir),
                    resume="true", export_weights="true")
    assert second["finished"] and second["steps"] == second["total_steps"] == 2
    exported = _state_dict(bundle / "models" / "generator.pt")
    assert exported.keys() == _state_dict(run_dir / "generator_ema.pt").keys()
    assert all(torch.equal(exported[k], v) for k, v in _state_dict(run_dir / "generator_ema.pt").items())


def test_train_gan_without_export_leaves_the_bundle_alone(tmp_path):
    bundle = copy_bundle(tmp_path / "bundle")
    config = write_tiny_config(tmp_path / "tiny.yaml")
    summary = _train(bundle, "train.json", training_config=str(config), output_dir=str(tmp_path / "gan"),
                     export_weights="false")
    assert summary["finished"] and summary["exported"] is None
    assert not (bundle / "models" / "generator.pt").exists()


def test_train_encoder_for_the_bundle_generator(tmp_path):
    from medsemgan.inference.model import SegmentationModel

    bundle = make_tiny_bundle(tmp_path / "bundle")
    before = _state_dict(bundle / "models" / "encoder.pt")
    summary = _train(bundle, "train_encoder.json", training_config=str(bundle / "configs" / "model.yaml"),
                     output_dir=str(tmp_path / "encoder"), export_weights=True)
    assert summary["finished"] and summary["steps"] >= 1
    after = _state_dict(bundle / "models" / "encoder.pt")
    assert after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in before)  # it trained
    SegmentationModel.from_bundle(bundle)  # and the bundle still loads


def test_train_encoder_without_generator_says_so(tmp_path):
    from medsemgan.errors import InputError

    bundle = copy_bundle(tmp_path / "bundle")
    config = write_tiny_config(tmp_path / "tiny.yaml")
    workflow, missing = run_workflow(bundle, "train_encoder.json", "train", properties_path=PROPERTIES,
                                     training_config=str(config), output_dir=str(tmp_path / "enc"))
    assert missing == []
    with pytest.raises(Exception) as info:
        workflow.run()
    err = info.value
    while err is not None and not isinstance(err, InputError):
        err = err.__cause__ or err.__context__
    assert err is not None and "no trained generator" in str(err)


def test_multi_gpu_config_under_torchrun_two_cpu_processes(tmp_path):
    bundle = copy_bundle(tmp_path / "bundle")
    config = write_tiny_config(tmp_path / "tiny.yaml")
    run_dir = tmp_path / "gan"
    files = f"['{bundle}/configs/train.json','{bundle}/configs/multi_gpu_train.json']"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    result = subprocess.run(
        [*torchrun, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
         "--config_file", files, "--bundle_root", str(bundle), "--training_config", str(config),
         "--device", "cpu", "--output_dir", str(run_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "distributed GAN training on 2 process(es)" in log
    assert "batch 4 on 2 process(es)" in log
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert len(state["rng"]) == 2  # one RNG stream per process: both ranks took part
    _state_dict(run_dir / "generator_ema.pt")


def test_train_configs_take_the_label_override():
    """The bundle's train.json / train_encoder.json expose `label` (own data's liver value(s)),
    as `medsemgan train gan|encoder --label` does."""
    import json as _json

    from medsemgan.bundle.training import encoder_config, gan_config
    from medsemgan.paths import REPO_DIR

    assert gan_config("cpu128", label="1,2")["data"]["label"] == "1,2"
    assert encoder_config("cpu128", label=3)["data"]["label"] == "3"
    assert gan_config("cpu128")["data"]["label"] == 1  # default: the liver is 1
    for name, call in (("train", "gan_config"), ("train_encoder", "encoder_config")):
        config = _json.loads((REPO_DIR / "bundles" / "medsemgan_liver" / "configs" / f"{name}.json").read_text())
        assert config["label"] is None and "@label" in config[call]
