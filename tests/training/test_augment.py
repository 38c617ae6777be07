import pytest
import torch

from medsemgan.training.augment import AugmentConfig, augment_pair
from medsemgan.training.synthetic import phantom_slices

GEOMETRIC_ONLY = dict(p=1.0, brightness=0.0, contrast=0.0, gamma=0.0)
INTENSITY_ONLY = dict(p=1.0, translate=0.0, rotate_deg=0.0, scale=0.0, cutout=0.0)


def _pair(n=8, res=32, threshold=0.15):
    images, _ = phantom_slices(n, res, seed=1)
    # A mask defined from the image itself, so geometric consistency can be checked exactly.
    mask01 = (images > threshold).float()
    return images, mask01 * 2 - 1, threshold


def test_geometric_transforms_move_image_and_mask_together():
    torch.manual_seed(0)
    images, mask, t = _pair()
    cfg = AugmentConfig(**GEOMETRIC_ONLY, rotate_deg=15.0, scale=0.2)
    aug_img, aug_mask = augment_pair(images, mask, cfg)
    assert not torch.allclose(aug_img, images)  # something moved
    from_image = aug_img > t
    from_mask = aug_mask > 0
    # Bilinear resampling blurs edges of both alike; only a thin boundary may disagree.
    agreement = (from_image == from_mask).float().mean().item()
    assert agreement > 0.97, agreement
    # And the agreement is not trivial: a mask shifted independently disagrees much more.
    other_img, _ = augment_pair(images, mask, cfg)
    assert ((other_img > t) == from_mask).float().mean().item() < agreement


def test_intensity_transforms_change_image_not_mask():
    torch.manual_seed(1)
    images, mask, _ = _pair()
    aug_img, aug_mask = augment_pair(images, mask, AugmentConfig(**INTENSITY_ONLY))
    assert torch.equal(aug_mask, mask)
    assert (aug_img - images).abs().max() > 0.01


def test_no_left_right_flip_keeps_liver_side():
    torch.manual_seed(2)
    images, _ = phantom_slices(16, 32, seed=4)
    _, masks = phantom_slices(16, 32, seed=4)
    _, aug_mask = augment_pair(images, masks * 2 - 1, AugmentConfig(p=1.0))
    cols = torch.arange(32).float()
    weights = (aug_mask > 0).float().sum(dim=(1, 2))  # [N, W]
    centroid_x = (weights * cols).sum(1) / weights.sum(1).clamp(min=1)
    # The phantom liver sits on the image's left half; augmentation must never move it across.
    assert (centroid_x[weights.sum(1) > 0] < 16).all()


def test_augmentation_is_differentiable_for_both_inputs():
    images, mask, _ = _pair(n=2, res=16)
    images.requires_grad_(True)
    mask = mask.clone().requires_grad_(True)
    aug_img, aug_mask = augment_pair(images, mask, AugmentConfig(p=1.0))
    (aug_img.sum() + aug_mask.sum()).backward()
    assert images.grad.abs().sum() > 0 and mask.grad.abs().sum() > 0


def test_disabled_is_identity_and_unknown_keys_rejected():
    images, mask, _ = _pair(n=2, res=16)
    out_img, out_mask = augment_pair(images, mask, AugmentConfig(enabled=False))
    assert out_img is images and out_mask is mask
    try:
        AugmentConfig.from_dict({"flip": True})
    except ValueError as err:
        assert "flip" in str(err)
    else:
        raise AssertionError("unknown key accepted")


def test_modality_shift_is_off_by_default_and_changes_nothing_then():
    image, mask = torch.rand(4, 1, 32, 32) * 2 - 1, torch.rand(4, 1, 32, 32) * 2 - 1
    assert not AugmentConfig().modality_shift.enabled
    torch.manual_seed(5)
    plain = augment_pair(image, mask, AugmentConfig())
    torch.manual_seed(5)
    explicit = augment_pair(image, mask, AugmentConfig.from_dict({"modality_shift": {"p": 0.0}}))
    assert torch.equal(plain[0], explicit[0]) and torch.equal(plain[1], explicit[1])


def test_modality_shift_remaps_the_image_only_and_passes_gradients():
    geometry_only = {"p": 1.0, "brightness": 0.0, "contrast": 0.0, "gamma": 0.0, "cutout": 0.0}
    shifted_cfg = AugmentConfig.from_dict({**geometry_only, "modality_shift": {"p": 1.0}})
    plain_cfg = AugmentConfig.from_dict(geometry_only)
    base = torch.linspace(-1, 1, 32 * 32).view(1, 1, 32, 32).repeat(3, 1, 1, 1)
    image = base.clone().requires_grad_(True)
    mask = (base > 0).float() * 2 - 1
    torch.manual_seed(7)
    out_image, out_mask = augment_pair(image, mask, shifted_cfg)
    torch.manual_seed(7)
    ref_image, ref_mask = augment_pair(base, mask, plain_cfg)
    assert torch.equal(out_mask, ref_mask)  # the label sees the same geometry, no remapping
    assert not torch.allclose(out_image, ref_image)  # the image's grey values were remapped
    out_image.square().sum().backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0  # fakes keep their gradient


def test_modality_shift_keys_are_checked():
    with pytest.raises(ValueError, match="modality_augment"):
        AugmentConfig.from_dict({"modality_shift": {"p": 2.0}})
    with pytest.raises(ValueError, match="unknown modality_augment keys"):
        AugmentConfig.from_dict({"modality_shift": {"strength": 1}})


def test_joint_modality_shift_touches_pairs_only():
    """The joint discriminator's pairs are shifted; the image discriminator's plain images are not."""
    geometry_only = {"p": 1.0, "brightness": 0.0, "contrast": 0.0, "gamma": 0.0, "cutout": 0.0}
    joint_cfg = AugmentConfig.from_dict({**geometry_only, "joint_modality_shift": {"p": 1.0}})
    plain_cfg = AugmentConfig.from_dict(geometry_only)
    assert not joint_cfg.modality_shift.enabled and joint_cfg.joint_modality_shift.enabled
    base = torch.linspace(-1, 1, 32 * 32).view(1, 1, 32, 32).repeat(3, 1, 1, 1)
    mask = (base > 0).float() * 2 - 1
    torch.manual_seed(7)
    alone, _ = augment_pair(base, None, joint_cfg)
    torch.manual_seed(7)
    reference, _ = augment_pair(base, None, plain_cfg)
    assert torch.equal(alone, reference)  # no mask: the image discriminator's input, untouched
    torch.manual_seed(7)
    pair_image, pair_mask = augment_pair(base, mask, joint_cfg)
    torch.manual_seed(7)
    ref_image, ref_mask = augment_pair(base, mask, plain_cfg)
    assert torch.equal(pair_mask, ref_mask) and not torch.allclose(pair_image, ref_image)
    with pytest.raises(ValueError, match="modality_augment"):
        AugmentConfig.from_dict({"joint_modality_shift": {"p": 2.0}})


def test_the_trainer_shifts_what_the_joint_discriminator_sees_and_not_what_the_image_one_sees(monkeypatch, tmp_path):
    """In a real (tiny) training run, every joint-discriminator input comes out of augment_pair
    remapped by the joint shift, and every image-discriminator input comes out as without it."""
    import dataclasses

    from helpers import tiny_config

    from medsemgan.training import gan as gan_module
    from medsemgan.training.run import train_gan

    changed = {"pair": [], "image": []}
    real_augment_pair = gan_module.augment_pair

    def spy(image, mask, cfg):
        state = torch.get_rng_state()
        out = real_augment_pair(image, mask, cfg)
        after = torch.get_rng_state()
        torch.set_rng_state(state)
        off = dataclasses.replace(cfg, joint_modality_shift=dataclasses.replace(cfg.joint_modality_shift, p=0.0))
        without = real_augment_pair(image.detach(), None if mask is None else mask.detach(), off)
        torch.set_rng_state(after)
        changed["image" if mask is None else "pair"].append(not torch.allclose(out[0].detach(), without[0]))
        return out

    monkeypatch.setattr(gan_module, "augment_pair", spy)
    config = tiny_config({"kimg": 0.008, "augment": {"p": 0.5, "joint_modality_shift": {"p": 1.0}}})
    assert train_gan(config, tmp_path / "run")["steps"] == 2
    assert changed["pair"] and all(changed["pair"])  # the joint D saw remapped grey values every time
    assert changed["image"] and not any(changed["image"])  # the image D never did
