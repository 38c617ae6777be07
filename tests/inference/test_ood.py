"""The out-of-domain verdict and how the model configuration chooses it."""

import pytest
import torch

from medsemgan.inference.ood import DEFAULT_OOD_THRESHOLDS, ood_message, ood_setting, ood_verdict


def test_setting_defaults_to_the_structural_signal_and_reads_the_configuration():
    assert ood_setting({}) == ("structure", DEFAULT_OOD_THRESHOLDS["structure"])
    assert ood_setting({"ood_signal": "mse", "ood_threshold": 0.2}) == ("mse", 0.2)
    assert ood_setting({"ood_signal": "structure", "ood_threshold": None}) == (
        "structure", DEFAULT_OOD_THRESHOLDS["structure"])


def test_an_older_configuration_with_only_an_mse_threshold_keeps_its_meaning():
    assert ood_setting({"ood_mse_threshold": 0.07}) == ("mse", 0.07)
    # an explicit signal wins over the legacy key
    assert ood_setting({"ood_mse_threshold": 0.07, "ood_signal": "structure", "ood_threshold": 0.8}) == (
        "structure", 0.8)


def test_an_unknown_signal_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="structure"):
        ood_setting({"ood_signal": "lpips"})


def test_verdict_compares_the_chosen_signals_mean_with_the_threshold():
    per_slice = {"structure_error": torch.tensor([0.70, 0.90]), "recon_mse": torch.tensor([0.01, 0.03])}
    high = ood_verdict(per_slice, "structure", 0.75)
    assert high["ood_score"] == pytest.approx(0.80) and high["out_of_domain"] is True
    assert high["ood_signal"] == "structure" and high["ood_threshold"] == 0.75
    low = ood_verdict(per_slice, "mse", 0.05)
    assert low["ood_score"] == pytest.approx(0.02) and low["out_of_domain"] is False
    assert "structural error" in ood_message("a.nii.gz", high) and "a.nii.gz" in ood_message("a.nii.gz", high)


def test_signal_record_lists_each_present_signal_with_its_mean():
    from medsemgan.inference.ood import signal_record

    record = signal_record({"recon_mse": torch.tensor([0.1, 0.3]), "structure_error": torch.tensor([0.5, 0.7]),
                            "loss": torch.tensor([1.0, 2.0])})
    assert record["recon_mse"] == [0.1, 0.3] and record["mean_recon_mse"] == pytest.approx(0.2)
    assert record["structure_error"] == [0.5, 0.7] and record["mean_structure_error"] == pytest.approx(0.6)
    assert "loss" not in record and "mean_loss" not in record
    assert signal_record({"structure_error": torch.tensor([0.8])}) == {"structure_error": [0.8],
                                                                      "mean_structure_error": pytest.approx(0.8)}
