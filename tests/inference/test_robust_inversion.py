"""Inversion that does not fail silently: restarts per slice and 3-D mask post-processing."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from medsemgan.inference.inferer import TTOInferer, keep_better, restart_init
from medsemgan.inference.postprocess import check_mode, postprocess_mask
from medsemgan.inference.tto import TTOOptions


class _Network:
    def __init__(self, G, E):
        self.generator, self.encoder = G, E


def test_neighbour_restart_starts_from_the_better_adjacent_slice(tiny_models):
    G, _ = tiny_models
    ws = torch.arange(4.0).view(4, 1, 1).expand(4, G.num_ws, G.w_dim).clone()
    loss = torch.tensor([0.5, 0.1, 0.9, 0.2])
    init = restart_init("neighbour", {"ws": ws, "loss": loss}, G)
    # slice 0: itself (0.5) vs 1 (0.1) -> 1; slice 1: 0 (0.5) vs 2 (0.9) -> 0;
    # slice 2: 1 (0.1) vs 3 (0.2) -> 1; slice 3: 2 (0.9) vs itself (0.2) -> 3
    assert init[:, 0, 0].tolist() == [1.0, 0.0, 1.0, 3.0]
    mean = restart_init("mean", {"ws": ws, "loss": loss}, G)
    assert torch.equal(mean[2, 3], G.w_avg.float())
    with pytest.raises(ValueError, match="unknown restart"):
        restart_init("random", {"ws": ws, "loss": loss}, G)


def test_keep_better_takes_the_lower_objective_per_slice_and_keeps_the_first_ood_signal():
    first = {"ws": torch.zeros(3, 2, 2), "logits": torch.zeros(3, 1, 2, 2), "recon": torch.zeros(3),
             "structure": torch.full((3,), 0.7), "loss": torch.tensor([1.0, 0.2, 0.5]),
             "steps": torch.tensor([5, 5, 5])}
    again = {"ws": torch.ones(3, 2, 2), "logits": torch.ones(3, 1, 2, 2), "recon": torch.ones(3),
             "structure": torch.full((3,), 0.1), "loss": torch.tensor([0.5, 0.3, 0.5]),
             "steps": torch.tensor([4, 5, 6])}
    merged = keep_better(first, again)
    assert torch.equal(merged["loss"], torch.tensor([0.5, 0.2, 0.5]))
    assert merged["ws"][:, 0, 0].tolist() == [1.0, 0.0, 0.0]  # a tie keeps the first
    assert merged["logits"][:, 0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert torch.equal(merged["structure"], first["structure"])
    assert merged["steps"].tolist() == [9, 10, 11]


def test_restarts_never_end_with_a_worse_objective(tiny_models, target_slices):
    G, E = tiny_models
    volume = target_slices.permute(1, 2, 3, 0)[None]  # [1, 1, S, S, D]
    plain = TTOInferer(TTOOptions(steps=3, lr=0.05), batch_size=2)
    plain(volume, _Network(G, E))
    again = TTOInferer(TTOOptions(steps=3, lr=0.05, restarts=("neighbour", "mean")), batch_size=2)
    again(volume, _Network(G, E))
    before, after = plain.last_extras["loss"][0], again.last_extras["loss"][0]
    assert bool((after <= before + 1e-6).all())
    assert bool((again.last_extras["steps_run"][0] > plain.last_extras["steps_run"][0]).all())
    assert torch.equal(again.last_extras["structure_error"], plain.last_extras["structure_error"])


def test_smoothness_sums_the_squared_steps_to_each_neighbour():
    from medsemgan.inference.tto import smoothness_per_slice

    ws = torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1).expand(3, 2, 4).clone()
    assert smoothness_per_slice(ws).tolist() == [1.0, 5.0, 4.0]  # steps 1 and 2, squared
    before, after = torch.full((2, 4), -1.0), torch.full((2, 4), 3.0)
    assert smoothness_per_slice(ws, before, after).tolist() == [2.0, 5.0, 4.0]
    assert smoothness_per_slice(ws[:1]).tolist() == [0.0]


def test_smoothness_pulls_adjacent_slices_together_across_batches(tiny_models, target_slices):
    G, E = tiny_models
    volume = target_slices.permute(1, 2, 3, 0)[None]  # [1, 1, S, S, D]

    def solved_ws(weight: float) -> torch.Tensor:
        inferer = TTOInferer(TTOOptions(steps=6, lr=0.05, smooth_weight=weight), batch_size=2)
        found = {}
        original = inferer._solve

        def keep(*args, **kwargs):
            found.update(original(*args, **kwargs))
            return found
        inferer._solve = keep
        inferer(volume, _Network(G, E))
        return found["ws"]

    independent, smooth = solved_ws(0.0), solved_ws(100.0)
    step = lambda ws: (ws[1:] - ws[:-1]).square().mean(dim=(1, 2))  # noqa: E731
    # every adjacent pair ends closer, the pair that straddles the two batches (1, 2) included
    assert bool((step(smooth) < step(independent)).all())
    with pytest.raises(ValueError, match="smooth_weight"):
        TTOOptions(smooth_weight=-1.0).validate()


def test_unknown_restart_is_refused():
    with pytest.raises(ValueError, match="restarts"):
        TTOOptions.from_config({"restarts": ["encoder", "sideways"]})
    assert TTOOptions.from_config({"restarts": "mean"}).restarts == ("mean",)


def _mask_with_hole_and_island() -> MetaTensor:
    mask = torch.zeros(1, 20, 20, 10, dtype=torch.uint8)
    mask[0, 2:12, 2:12, 2:8] = 1  # 600 voxels of "liver"
    mask[0, 5:7, 5:7, 4:6] = 0  # an enclosed hole of 8
    mask[0, 15:18, 15:18, 3:5] = 1  # an island of 18
    return MetaTensor(mask, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64)))


def test_postprocess_keeps_the_largest_component_and_fills_enclosed_holes():
    mask = _mask_with_hole_and_island()
    assert int(mask.sum()) == 610
    largest = postprocess_mask(mask, "largest")
    filled = postprocess_mask(mask, "largest_fill")
    assert int(largest.sum()) == 592 and int(filled.sum()) == 600
    assert int(largest[0, 16, 16, 3]) == 0 and int(filled[0, 5, 5, 4]) == 1
    assert isinstance(filled, MetaTensor) and torch.equal(filled.affine, mask.affine)
    assert filled.dtype == torch.uint8
    assert torch.equal(postprocess_mask(mask, "none"), mask)
    empty = torch.zeros(1, 4, 4, 4, dtype=torch.uint8)
    assert torch.equal(postprocess_mask(empty, "largest_fill"), empty)


def test_postprocess_keeps_diagonal_contacts_and_open_concavities():
    mask = torch.zeros(1, 9, 9, 5, dtype=torch.uint8)
    mask[0, 1:4, 1:4, 1:4] = 1
    mask[0, 4:7, 4:7, 4] = 1  # touches the first block only at a corner: same 26-connected organ
    mask[0, 1:8, 6, 1] = 1
    mask[0, 1:8, 8, 1] = 1  # a groove open to the outside at both ends is not a hole
    out = postprocess_mask(mask, "largest_fill")
    assert int(out[0, 5, 5, 4]) == 1
    assert int(out[0, 4, 7, 1]) == 0
    assert check_mode(None) == "none"
    with pytest.raises(ValueError, match="postprocess"):
        check_mode("smooth")


def test_segment_volume_applies_and_records_postprocess(bundle, small_nifti):
    from medsemgan.inference.model import SegmentationModel
    from medsemgan.inference.segment import SegmentOptions, segment_volume

    model = SegmentationModel.from_bundle(bundle)
    raw, raw_extras = segment_volume(small_nifti, model, SegmentOptions(steps=0, threshold=0.3))
    cleaned, extras = segment_volume(small_nifti, model, SegmentOptions(steps=0, threshold=0.3,
                                                                        postprocess="largest"))
    assert raw_extras["postprocess"] == "none" and extras["postprocess"] == "largest"
    assert torch.equal(cleaned.as_tensor(), postprocess_mask(raw, "largest").as_tensor())
    assert extras["liver_voxels"] == int(cleaned.sum())
