import argparse
import json
import pytest
import yaml
from helpers import tiny_config

from medsemgan.errors import InputError
from medsemgan.training.config import levers_from, load_config, normalise


def test_shipped_configs_load_with_paper_defaults():
    for name in ("cpu128", "paper256"):
        config = load_config(name)
        t = config["training"]
        assert (t["lr"], t["betas"]) == (0.002, [0.0, 0.99])
        assert (t["r1_gamma_image"], t["r1_interval_image"], t["r1_gamma_joint"], t["r1_interval_joint"]) == (10.0, 16, 10.0, 16)
        assert (t["pl_weight"], t["pl_interval"], t["style_mixing"], t["feature_matching_weight"]) == (2.0, 4, 0.9, 2.0)
        assert config["model"]["resolution"] in (128, 256)
    assert load_config("cpu128")["training"]["augment"]["enabled"] is True


def test_unknown_keys_and_bad_values_are_input_errors():
    with pytest.raises(InputError, match="unknown keys in training"):
        normalise({"training": {"r1_gama": 1}})
    with pytest.raises(InputError, match="batch_size"):
        normalise({"training": {"batch_size": 0}})
    with pytest.raises(InputError, match="flip"):
        normalise({"training": {"augment": {"flip": True}}})
    with pytest.raises(InputError, match="no such configuration"):
        load_config("no_such_config")


def test_fast_switch_controls_every_lever():
    assert levers_from({"fast": True}) == {"bf16": True, "channels_last": True, "channels_last_generator": True,
                                           "paired_d_pass": True, "shared_fakes": True, "fused_ops": True, "compile": False, "bf16_regularizers": True}
    assert not any(levers_from({"fast": False}).values())
    assert levers_from({"fast": False, "levers": {"bf16": True}})["bf16"] is True
    with pytest.raises(ValueError, match="double backward"):
        levers_from({"levers": {"compile": True}})


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    from medsemgan import cli

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": tiny_config()["model"], "training": {"learning_rate": 1}}))
    code = cli.main(["train", "gan", "--config", str(bad), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "learning_rate" in err and str(bad) in err
    assert not (tmp_path / "run").exists()


def test_bench_train_reports_fast_and_reference(tmp_path):
    from medsemgan.bench import train as bench_train

    config = tiny_config()
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({k: config[k] for k in ("model", "data", "training")}))
    args = argparse.Namespace(config=str(path), iterations=2, repeats=1, batch=None, threads=None,
                              device="cpu", breakdown=False)
    result = bench_train.run(args)
    json.dumps(result)  # printable as one JSON object
    assert result["s_per_kimg_fast"] > 0 and result["s_per_kimg_reference"] > 0
    assert result["speedup"] == pytest.approx(result["s_per_kimg_reference"] / result["s_per_kimg_fast"], rel=0.02)
    assert result["levers_fast"]["bf16"] is True


def test_overrides_accept_partial_namespaces():
    from medsemgan.training.cli_gan import apply_overrides

    config = apply_overrides(tiny_config(), argparse.Namespace(kimg=2.0, labeled="volumes:1"))
    assert config["training"]["kimg"] == 2.0 and config["data"]["labeled_budget"] == "volumes:1"
    config = apply_overrides(tiny_config(), argparse.Namespace(labeled="20", no_fast=True, threads=1))
    assert config["data"]["labeled_budget"] == 20 and config["training"]["fast"] is False
    assert config["training"]["threads"] == 1
    assert apply_overrides(tiny_config(), argparse.Namespace(labeled=8))["data"]["labeled_budget"] == 8
