"""Levers decided by a measurement on this CPU, cached per CPU model and configuration."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config

from medsemgan.training import lever_probe
from medsemgan.training.config import levers_from


def test_probe_reads_as_the_fast_setting_until_resolved_and_bad_values_are_refused():
    assert levers_from({"fast": True, "levers": {"fused_ops": "probe"}})["fused_ops"] is True
    with pytest.raises(ValueError, match="probe"):
        levers_from({"fast": True, "levers": {"fused_ops": "maybe"}})


def test_resolve_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEMGAN_CACHE", str(tmp_path))
    calls = []

    def fake_measure(config, lever, device):
        calls.append(lever)
        return {"on_s": 2.0, "off_s": 1.0, "use": False}  # the lever loses on this "CPU"

    monkeypatch.setattr(lever_probe, "measure_lever", fake_measure)
    config = tiny_config({"levers": {"fused_ops": "probe", "shared_fakes": False}})
    resolved = lever_probe.resolve_probes(config, torch.device("cpu"))
    assert resolved["training"]["levers"] == {"fused_ops": False, "shared_fakes": False}
    assert config["training"]["levers"]["fused_ops"] == "probe"  # the caller's dict is untouched
    again = lever_probe.resolve_probes(config, torch.device("cpu"))
    assert again["training"]["levers"]["fused_ops"] is False
    assert calls == ["fused_ops"]  # measured once; the second run read the cache
    cache = json.loads((tmp_path / "lever_probes.json").read_text())
    (key,) = cache
    assert lever_probe.cpu_model() in key and "fused_ops" in key and torch.__version__ in key


def test_a_config_without_probes_is_returned_as_is(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEMGAN_CACHE", str(tmp_path))
    config = tiny_config()
    assert lever_probe.resolve_probes(config, torch.device("cpu")) is config
    assert not (tmp_path / "lever_probes.json").exists()


def test_measure_lever_times_both_settings_on_the_runs_model():
    result = lever_probe.measure_lever(tiny_config({"levers": {"bf16": "probe"}}), "bf16", torch.device("cpu"))
    assert result["on_s"] > 0 and result["off_s"] > 0
    assert result["use"] == (result["on_s"] <= result["off_s"])
