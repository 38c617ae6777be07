"""``medsemgan bench model``: the generator's element-wise work is recorded from a real step and
replayed through both op paths; ``speedup`` is that ratio."""

from __future__ import annotations

import argparse

import pytest
import torch

from medsemgan.bench import model as bench
from medsemgan.models import generator as generator_module
from medsemgan.models import layers as layers_module
from medsemgan.models.build import build_models
from medsemgan.models.config import model_config_from_dict
from medsemgan.models.generator import OutputHead, StyledConv
from medsemgan.models.layers import FullyConnected
from medsemgan.ops.bias_act import bias_act

TINY = {
    "resolution": 16,
    "generator": {"z_dim": 8, "w_dim": 8, "mapping_layers": 2, "channel_base": 64, "channel_max": 8},
    "image_discriminator": {"channel_base": 64, "channel_max": 8},
    "joint_discriminator": {"num_scales": 1, "base_channels": 4, "n_layers": 1, "channel_max": 4},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _bias_act_calls_per_forward(module: torch.nn.Module) -> int:
    """bias_act calls one forward of ``module`` makes, read off the layers it is built from:
    styled convs and output heads call it once; a fully connected layer does unless it is
    linear with a bias (then it is one addmm)."""
    return sum(
        isinstance(m, (StyledConv, OutputHead))
        or (isinstance(m, FullyConnected) and (m.activation != "linear" or m.bias is None))
        for m in module.modules()
    )


def expected_generator_calls(G, style_mixing_prob: float) -> int:
    # Style mixing maps a second z, so the mapping network runs twice per generator forward.
    mapping_passes = 2 if style_mixing_prob > 0 else 1
    return _bias_act_calls_per_forward(G.synthesis) + mapping_passes * _bias_act_calls_per_forward(G.mapping)


def _tiny_steps(batch=2):
    torch.manual_seed(0)
    G, D_image, D_joint = build_models(model_config_from_dict(TINY))
    return bench.Steps(G, D_image, D_joint, batch)


def test_records_every_generator_call_and_none_of_the_discriminators():
    steps = _tiny_steps()
    with bench.record_elementwise_calls(steps.G) as calls:
        steps.generator()  # also runs both discriminators, which call bias_act too
    expected = expected_generator_calls(steps.G, steps.style_mixing_prob)
    assert expected > 0 and len(calls) == expected
    lrelu = [c for c in calls if c.act == "lrelu"]
    styled = sum(isinstance(m, StyledConv) for m in steps.G.modules())
    assert len(lrelu) == styled + 2 * len(steps.G.mapping.layers)
    assert all(c.x_requires_grad and c.bias_dtype == torch.float32 for c in calls)
    assert {c.shape for c in calls if c.act == "linear"} == {
        (2, ch, r, r) for r in steps.G.synthesis.resolutions for ch in (steps.G.img_channels, steps.G.num_labels)
    }
    # The swap is undone on exit: the models call the op itself again.
    assert generator_module.bias_act is bias_act and layers_module.bias_act is bias_act


def test_recorder_restores_the_op_after_an_error():
    steps = _tiny_steps()
    with pytest.raises(RuntimeError, match="boom"):
        with bench.record_elementwise_calls(steps.G):
            assert generator_module.bias_act is not bias_act
            raise RuntimeError("boom")
    assert generator_module.bias_act is bias_act and layers_module.bias_act is bias_act
    assert not steps.G._forward_pre_hooks and not steps.G._forward_hooks


def test_replay_times_both_paths():
    steps = _tiny_steps()
    result = bench.generator_elementwise(steps, repeats=2)
    assert result["calls"] == expected_generator_calls(steps.G, steps.style_mixing_prob)
    assert result["fused_ms"] > 0 and result["reference_ms"] > 0
    assert result["speedup"] == pytest.approx(result["reference_ms"] / result["fused_ms"], rel=0.01)
    assert sum(s["count"] for s in result["signatures"]) == result["calls"]


def test_bench_model_json_defines_speedup_as_the_elementwise_ratio(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("model:\n" + "".join(f"  {k}: {v}\n" for k, v in TINY.items()).replace("'", ""))
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = ["--configs", str(path), "--batch", "2", "--repeats", "1", "--threads", "1", "--no-forms",
            "--elementwise-repeats", "1"]
    result = bench.run(parser.parse_args(args))
    entry = result["configs"][str(path)]
    elementwise = entry["g_elementwise"]
    G, _, _ = build_models(model_config_from_dict(TINY))
    assert elementwise["calls"] == expected_generator_calls(G, 0.9)
    assert elementwise["fused_ms"] > 0 and elementwise["reference_ms"] > 0
    assert result["speedup"] == entry["speedup"] == elementwise["speedup"] > 0
    assert "element-wise" in result["speedup_definition"]
    for key in ("speedup_g_step", "speedup_cpu_time", "speedup_train_step", "speedup_g_non_dense_profile"):
        assert entry[key] > 0, key
    assert result["speedup_g_step"] == entry["speedup_g_step"]
    assert "speedup_g_elementwise" not in entry
