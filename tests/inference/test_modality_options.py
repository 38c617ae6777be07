"""Per-modality inference options: ``inference.modality_overrides`` -> ``TTOInferer``."""

import pytest
import torch
from monai.data import MetaTensor

from medsemgan.inference.inferer import MODALITY_META_KEY, TTOInferer
from medsemgan.inference.options import SegmentOptions, modality_overrides
from medsemgan.inference.tto import TTOOptions

CFG = {"steps": 4, "perceptual_weight": 1.0, "mse_weight": 0.1, "early_stop_patience": 0,
       "modality_overrides": {"MR": {"perceptual": "lncc", "mse_weight": 0.0}}}


class _Network(torch.nn.Module):
    def __init__(self, G, E):
        super().__init__()
        self.generator, self.encoder = G, E


def test_overrides_are_checked():
    assert modality_overrides(CFG) == {"MR": {"perceptual": "lncc", "mse_weight": 0.0}}
    assert modality_overrides({}) == {}
    with pytest.raises(ValueError, match="unknown modality"):
        modality_overrides({"modality_overrides": {"PET": {"steps": 1}}})
    with pytest.raises(ValueError, match="unknown options"):
        modality_overrides({"modality_overrides": {"MR": {"perceptuall": "lncc"}}})


def test_segment_options_layer_config_then_modality_then_user():
    o = SegmentOptions()
    assert o.tto_options(CFG).perceptual == "ms_ssim"
    assert o.tto_options(CFG, "CT").mse_weight == 0.1
    mr = o.tto_options(CFG, "mr")
    assert (mr.perceptual, mr.mse_weight, mr.steps) == ("lncc", 0.0, 4)
    # The user's explicit options beat the configuration's per-modality value.
    user = SegmentOptions(steps=0, extra_tto={"mse_weight": 0.5}).tto_options(CFG, "MR")
    assert (user.steps, user.mse_weight, user.perceptual) == (0, 0.5, "lncc")
    assert set(SegmentOptions().modality_tto_options(CFG)) == {"MR"}


def test_inferer_picks_options_by_argument_or_metadata(tiny_models):
    G, E = tiny_models
    net = _Network(G, E)
    options = SegmentOptions()
    inferer = TTOInferer(options.tto_options(CFG), batch_size=8,
                         modality_options=options.modality_tto_options(CFG))
    volume = torch.rand(1, 1, 32, 32, 3) * 2 - 1
    ct = inferer(volume, net, modality="CT")
    ct_loss = inferer.last_extras["loss"].clone()
    mr = inferer(volume, net, modality="MR")
    mr_loss = inferer.last_extras["loss"].clone()
    assert not torch.allclose(ct_loss, mr_loss)  # another objective was optimised
    # The same choice from the (collated) metadata the bundle's transforms leave on the batch.
    meta_batch = MetaTensor(torch.cat([volume, volume]), meta={MODALITY_META_KEY: ["CT", "MR"]})
    both = inferer(meta_batch, net)
    assert torch.allclose(both[0], ct[0], atol=1e-5) and torch.allclose(both[1], mr[0], atol=1e-5)
    assert torch.allclose(inferer.last_extras["loss"][1], mr_loss[0], atol=1e-5)
    # Unknown or missing modality: the shared options.
    inferer(volume, net)
    assert torch.allclose(inferer.last_extras["loss"], ct_loss, atol=1e-6)
    assert inferer.options_for("MR").perceptual == "lncc" and inferer.options_for(None).perceptual == "ms_ssim"


def test_constructor_overrides_reach_every_modality():
    inferer = TTOInferer(TTOOptions(steps=5), modality_options={"mr": TTOOptions(steps=7)}, steps=0)
    assert inferer.options_for("CT").steps == 0 and inferer.options_for("MR").steps == 0


def test_a_model_yaml_with_a_bad_override_is_an_input_error(tmp_path):
    import yaml

    from medsemgan.errors import InputError
    from medsemgan.inference.model import load_model_sections
    from medsemgan.training.config import config_path

    raw = yaml.safe_load(config_path("cpu128").read_text())
    raw["inference"]["modality_overrides"] = {"US": {"steps": 3}}
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="unknown modality"):
        load_model_sections(path)
    raw["inference"]["modality_overrides"] = {"MRI": {"steps": 3}}  # MRI is read as MR
    path.write_text(yaml.safe_dump(raw))
    assert modality_overrides(load_model_sections(path).inference) == {"MR": {"steps": 3}}
