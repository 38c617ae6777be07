import math

import pytest
import torch

from medsemgan.models.generator import IMAGE_ONLY, LABEL_ONLY, parameters_by_role
from medsemgan.training import losses
from medsemgan.training.ema import ema_beta


def _grads(named):
    return {name: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for name, p in named}


def _joint_generator_grads(trainer, detach_image: bool):
    """Gradients of G from the joint terms only (hinge + feature matching)."""
    trainer._phase(trainer.G)
    trainer.G.zero_grad(set_to_none=True)
    lab_img, lab_mask = trainer.labeled_batch(0)
    if detach_image:
        terms = trainer.generator_terms(4, lab_img, lab_mask)
        joint = terms["joint_adv"] + 2.0 * terms["feature_matching"]
    else:  # the variant the method forbids, to show the test can tell the difference
        _, img, logits = trainer._generate(4)
        out = trainer.D_joint(img, trainer.fake_mask_input(logits))
        joint = losses.hinge_g_loss(out)
    joint.backward()
    roles = parameters_by_role(trainer.G)
    return _grads(roles[IMAGE_ONLY]), _grads(roles[LABEL_ONLY])


@pytest.mark.parametrize("fast", [False, True])
def test_joint_term_reaches_generator_only_through_label_head(make_trainer, fast):
    trainer = make_trainer({"fast": fast})
    image_only, label_only = _joint_generator_grads(trainer, detach_image=True)
    assert image_only and label_only
    assert all(v == 0.0 for v in image_only.values()), image_only
    assert sum(label_only.values()) > 0

    image_only_bad, _ = _joint_generator_grads(trainer, detach_image=False)
    assert sum(image_only_bad.values()) > 0  # without the detach the toRGB heads would learn


def test_image_term_reaches_image_heads(make_trainer):
    trainer = make_trainer()
    trainer._phase(trainer.G)
    lab_img, lab_mask = trainer.labeled_batch(0)
    trainer.generator_terms(4, lab_img, lab_mask)["image_adv"].backward()
    roles = parameters_by_role(trainer.G)
    assert sum(_grads(roles[IMAGE_ONLY]).values()) > 0
    assert sum(_grads(roles[LABEL_ONLY]).values()) == 0  # the image D never sees the label


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_r1_steps_move_discriminator_weights_after_generator_step(make_trainer):
    trainer = make_trainer()
    lab_img, lab_mask = trainer.labeled_batch(0)
    trainer.g_step(lab_img, lab_mask)  # leaves the discriminators frozen, as in the official loop
    assert not any(p.requires_grad for p in trainer.D_image.parameters())

    real = trainer.unlabeled_batch(0)
    before = _snapshot(trainer.D_image)
    stats = trainer.d_image_r1_step(real)
    assert stats["reg/r1_image"].item() > 0
    assert _changed(before, trainer.D_image)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.D_image.parameters())

    before = _snapshot(trainer.D_joint)
    trainer.d_joint_r1_step(lab_img, lab_mask)
    assert _changed(before, trainer.D_joint)


def test_each_phase_updates_only_its_network(make_trainer):
    trainer = make_trainer()
    real = trainer.unlabeled_batch(0)
    g_before, dj_before = _snapshot(trainer.G), _snapshot(trainer.D_joint)
    trainer.d_image_step(real)
    assert not _changed(g_before, trainer.G) and not _changed(dj_before, trainer.D_joint)
    di_before = _snapshot(trainer.D_image)
    lab_img, lab_mask = trainer.labeled_batch(0)
    trainer.g_step(lab_img, lab_mask)
    assert _changed(g_before, trainer.G) and not _changed(di_before, trainer.D_image)


def test_lazy_regularisers_run_at_their_intervals(make_trainer):
    trainer = make_trainer({"r1_interval_image": 2, "r1_interval_joint": 3, "pl_interval": 4})
    seen = {"reg/r1_image": [], "reg/r1_joint": [], "reg/path_length": []}
    for step in range(6):
        stats = trainer.step()
        for key in seen:
            if key in stats:
                seen[key].append(step)
    assert seen == {"reg/r1_image": [0, 2, 4], "reg/r1_joint": [0, 3], "reg/path_length": [0, 4]}
    assert trainer.pl_mean.item() > 0
    assert trainer.images_seen == 6 * 4 and trainer.step_index == 6


def test_optimisers_use_lazy_corrected_hyperparameters(make_trainer):
    trainer = make_trainer({"r1_interval_image": 16, "pl_interval": 4})
    g = trainer.opt_G.param_groups[0]
    d = trainer.opt_D_image.param_groups[0]
    assert math.isclose(g["lr"], 0.002 * 4 / 5) and math.isclose(g["betas"][1], 0.99 ** (4 / 5))
    assert math.isclose(d["lr"], 0.002 * 16 / 17)


def test_ema_follows_generator_with_stylegan2_ada_schedule(make_trainer):
    # Half-life 10 kimg at batch 32: beta = 0.5 ** (32 / 10000); ramp-up caps the half-life.
    assert math.isclose(ema_beta(32, 10**6, 10.0, None), 0.5 ** (32 / 10_000))
    assert math.isclose(ema_beta(32, 1000, 10.0, 0.05), 0.5 ** (32 / 50))
    trainer = make_trainer()
    trainer.step()
    ema = dict(trainer.G_ema.named_parameters())
    moved = [n for n, p in trainer.G.named_parameters() if not torch.equal(p, ema[n])]
    assert moved  # EMA lags behind the trained weights
    assert not any(p.requires_grad for p in trainer.G_ema.parameters())


def test_loss_terms_finite_under_bf16(make_trainer):
    trainer = make_trainer({"fast": True, "r1_interval_image": 1, "r1_interval_joint": 1, "pl_interval": 1})
    for _ in range(2):
        stats = trainer.step()
    assert all(torch.isfinite(v).all() for v in stats.values()), stats


def test_generator_channels_last_lever_changes_layout_not_training(make_trainer):
    """The NHWC generator lever (with the batched modconv form) is a speed setting: from the same
    start, three float32 iterations (lazy R1 and path length included) give the same networks."""
    import copy

    from medsemgan.models.layers import ModulatedConv2d

    off = {"fast": False, "levers": {"fused_ops": True}}
    on = {"fast": False, "levers": {"fused_ops": True, "channels_last": True, "channels_last_generator": True}}
    plain, nhwc = make_trainer(off), make_trainer(on)
    nhwc.G.load_state_dict(plain.G.state_dict())
    nhwc.G_ema.load_state_dict(plain.G_ema.state_dict())
    nhwc.D_image.load_state_dict(plain.D_image.state_dict())
    nhwc.D_joint.load_state_dict(plain.D_joint.state_dict())
    weight = next(m.weight for m in nhwc.G.modules() if isinstance(m, ModulatedConv2d) and m.kernel_size == 3)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert {m.form for m in nhwc.G.modules() if isinstance(m, ModulatedConv2d)} == {"batched"}
    assert all(b.channels_last for b in nhwc.G.synthesis.blocks)
    for trainer in (plain, nhwc):
        torch.manual_seed(5)
        for _ in range(3):
            trainer.step()
    for a, b in ((plain.G, nhwc.G), (plain.D_image, nhwc.D_image), (plain.G_ema, nhwc.G_ema)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(q, p, rtol=2e-3, atol=2e-4, msg=name)
    moved = copy.deepcopy(plain.G.state_dict())
    assert any(not torch.equal(v, make_trainer(off).G.state_dict()[k]) for k, v in moved.items())


def test_paired_discriminator_pass_gives_the_same_step(make_trainer):
    """The paired_d_pass lever changes how many D passes run, not the image-D update."""
    off = {"fast": False, "levers": {"fused_ops": True}}
    on = {"fast": False, "levers": {"fused_ops": True, "paired_d_pass": True}}
    plain, paired = make_trainer(off), make_trainer(on)
    paired.D_image.load_state_dict(plain.D_image.state_dict())
    real = plain.unlabeled_batch(0)
    fake = torch.randn_like(real)
    assert paired.D_image.pairs_in_one_pass(real.shape[0])
    calls = []
    paired.D_image.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    stats = []
    for trainer in (plain, paired):
        torch.manual_seed(3)
        stats.append(trainer.d_image_step(real, fake))
    assert calls == [2 * real.shape[0]]  # one pass over reals and fakes together
    for key in ("loss/D_image", "scores/image_real", "scores/image_fake"):
        torch.testing.assert_close(stats[1][key], stats[0][key], rtol=1e-5, atol=1e-6)
    for p, q in zip(plain.D_image.parameters(), paired.D_image.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
def test_shared_fakes_run_one_generator_forward_per_iteration(make_trainer, shared):
    """shared_fakes: the discriminator phases and the generator phase use one generated batch
    (one synthesis forward instead of two); the discriminator updates never reach G, and G still
    trains in its own phase."""
    trainer = make_trainer({"fast": False, "levers": {"shared_fakes": shared}, "pl_interval": 1000,
                            "r1_interval_image": 1000, "r1_interval_joint": 1000})
    trainer.step()  # iteration 0 runs every regulariser; count a plain one
    calls = []
    trainer.G.synthesis.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    grads_after_d = []
    d_joint_step = trainer.d_joint_step

    def watched(*args, **kwargs):
        out = d_joint_step(*args, **kwargs)
        grads_after_d.append(all(p.grad is None for p in trainer.G.parameters()))
        return out

    trainer.d_joint_step = watched
    before = [p.detach().clone() for p in trainer.G.parameters()]
    for p in trainer.G.parameters():
        p.grad = None  # left over from the previous generator phase
    trainer.step()
    assert len(calls) == (1 if shared else 2)
    assert grads_after_d == [True]  # nothing from the discriminator phases reached G
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.G.parameters()))
