import math

import pytest
import torch

from medsemgan.training import losses


def test_logistic_losses_match_softplus_definitions():
    real = torch.tensor([[2.0], [0.0]])
    fake = torch.tensor([[-1.0], [3.0]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected_d = (sp(-2.0) + sp(0.0)) / 2 + (sp(-1.0) + sp(3.0)) / 2
    assert math.isclose(losses.logistic_d_loss(real, fake).item(), expected_d, rel_tol=1e-6)
    assert math.isclose(losses.logistic_g_loss(fake).item(), (sp(1.0) + sp(-3.0)) / 2, rel_tol=1e-6)


def test_hinge_losses_average_over_scales():
    real = [torch.tensor([[2.0, 0.5]]), torch.tensor([[0.0]])]
    fake = [torch.tensor([[-2.0, 0.0]]), torch.tensor([[1.0]])]
    # scale 0: relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25; fake relu(1-2)=0, relu(1)=1 -> 0.5 => 0.75
    # scale 1: relu(1-0)=1; relu(1+1)=2 => 3
    assert math.isclose(losses.hinge_d_loss(real, fake).item(), (0.75 + 3.0) / 2, rel_tol=1e-6)
    assert math.isclose(losses.hinge_g_loss(fake).item(), (1.0 + -1.0) / 2, rel_tol=1e-6)


def test_feature_matching_compares_batch_means_and_spares_reals():
    real = [[torch.ones(3, 2, 4, 4), torch.zeros(3, 1, 2, 2)]]
    fake_a = torch.ones(5, 2, 4, 4, requires_grad=True)
    fake_b = torch.zeros(5, 1, 2, 2, requires_grad=True)
    assert losses.feature_matching_loss(real, [[fake_a, fake_b]]).item() == 0.0
    real_leaf = torch.full((3, 2, 4, 4), 2.0, requires_grad=True)
    loss = losses.feature_matching_loss([[real_leaf, real[0][1]]], [[fake_a, fake_b]])
    # layer 0: |1 - 2| = 1, layer 1: 0 -> mean over layers 0.5
    assert math.isclose(loss.item(), 0.5, rel_tol=1e-6)
    loss.backward()
    assert real_leaf.grad is None
    assert fake_a.grad is not None and fake_a.grad.abs().sum() > 0


def test_r1_penalty_is_squared_input_gradient_norm():
    x = torch.randn(4, 1, 3, 3, requires_grad=True)
    m = torch.randn(4, 1, 3, 3, requires_grad=True)
    w = torch.tensor(3.0, requires_grad=True)  # a "discriminator weight"
    # logits = w * sum(x) + 2 * sum(m) per sample -> |grad|^2 = 9 * w^2 + 4 * 9 per sample
    outputs = [(w * x).flatten(1).sum(1, keepdim=True), (2 * m).flatten(1).sum(1, keepdim=True)]
    value = losses.r1_penalty(outputs, [x, m])
    assert math.isclose(value.item(), 81 + 36, rel_tol=1e-6)
    value.backward()  # create_graph: the penalty reaches the weights, d/dw (9 w^2) = 18 w
    assert math.isclose(w.grad.item(), 54.0, rel_tol=1e-6)


def test_path_length_penalty_updates_mean_and_is_differentiable():
    ws = torch.randn(3, 4, 8, requires_grad=True)
    weight = torch.randn(8, 16, requires_grad=True)
    images = (ws.mean(1) @ weight).view(3, 1, 4, 4)
    pl_mean = torch.zeros([])
    penalty, new_mean = losses.path_length_penalty(images, ws, pl_mean, decay=0.5)
    assert new_mean.item() > 0 and pl_mean.item() == 0
    penalty.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_path_length_penalty_values_for_a_linear_generator():
    """images = mean_k(ws[:, k]) @ W: J_w^T y = W y / num_ws for every layer, so each sample's
    length is |W y| / num_ws (y = the penalty's random image-space direction, N(0, 1/(H W)))."""
    torch.manual_seed(1)
    ws = torch.randn(3, 4, 8, requires_grad=True)
    weight = torch.randn(8, 16)
    images = (ws.mean(1) @ weight).view(3, 1, 4, 4)
    pl_mean = torch.tensor(2.0)
    torch.manual_seed(7)
    penalty, new_mean = losses.path_length_penalty(images, ws, pl_mean, decay=0.25)
    torch.manual_seed(7)
    y = (torch.randn(3, 1, 4, 4) / 4).view(3, 16)  # the same draw: 1/sqrt(H W) = 1/4
    lengths = (y @ weight.T).norm(dim=1) / 4
    expected_mean = 2.0 + 0.25 * (lengths.mean() - 2.0)
    assert new_mean.item() == pytest.approx(expected_mean.item(), rel=1e-5)
    assert penalty.item() == pytest.approx((lengths - expected_mean).square().mean().item(), rel=1e-5)
    # decay 0 keeps the running mean: against a = 0 the penalty is the mean squared length
    torch.manual_seed(7)
    raw, kept = losses.path_length_penalty(images, ws, torch.tensor(0.0), decay=0.0)
    assert kept.item() == 0.0
    assert raw.item() == pytest.approx(lengths.square().mean().item(), rel=1e-5)


def test_lazy_adam_correction():
    lr, betas = losses.lazy_adam_hyperparams(0.002, (0.0, 0.99), 16)
    c = 16 / 17
    assert math.isclose(lr, 0.002 * c)
    assert betas[0] == 0.0 and math.isclose(betas[1], 0.99**c)
    assert losses.lazy_adam_hyperparams(0.002, (0.0, 0.99), 0) == (0.002, (0.0, 0.99))
