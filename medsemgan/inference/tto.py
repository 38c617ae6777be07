"""Test-time optimisation: invert slices into the generator's W+ space, read the label off it.

For a batch of slices ``x``: ``w+ <- E(x)``, then ``steps`` Adam steps on ``w+`` minimising
``perceptual + 0.1 * MSE`` between ``G_image(w+)`` and ``x`` (plus an optional encoder-consistency
term ``||w+ - E(G_image(w+))||^2``), with StyleGAN's projector learning-rate ramp (linear ramp-up,
cosine ramp-down). The label is ``G_label(w+)`` at the best ``w+`` seen.

Design points, each tested:
- Losses are summed over slices and Adam runs per element, so a slice's trajectory is the same
  whether it is optimised alone or with others (up to floating-point rounding of batched convs).
- Early stopping is per slice: a slice whose loss has not improved for ``patience`` steps is
  frozen and leaves the batch (the batch shrinks, so later steps get cheaper); the batch ends when
  every slice has stopped. Freezing keeps the batch-independence above.
- Runs under ``torch.enable_grad()`` even when called inside ``torch.no_grad()`` (MONAI
  evaluators call inferers that way).
- Deterministic for a given input and seed: the global RNG is forked and seeded.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, fields
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from medsemgan.inference.losses import mse_per_slice, reconstruction_loss_per_slice


@dataclass
class TTOOptions:
    """Knobs of the optimisation; the ``inference:`` section of a model YAML fills them."""

    steps: int = 100  # K; 0 = encoder only
    lr: float = 0.1
    lr_rampup: float = 0.05  # fraction of steps with a linear ramp-up
    lr_rampdown: float = 0.25  # fraction of steps with a cosine ramp-down
    betas: tuple[float, float] = (0.9, 0.999)
    perceptual_weight: float = 1.0
    mse_weight: float = 0.1
    encoder_weight: float = 0.0  # ||w+ - E(G(w+))||^2, E(G(w+)) detached (one encoder forward per step)
    early_stop_patience: int = 0  # 0 = off; else steps without improvement before a slice stops
    early_stop_rel_tol: float = 1e-3  # improvement (fraction of the best loss) that resets patience
    noise_mode: str = "const"  # generator noise; 'const' keeps slices independent and repeatable
    bf16: bool = False  # bfloat16 autocast on CPU / CUDA for the generator and encoder
    seed: int = 0

    @classmethod
    def from_config(cls, section: dict | None, **overrides) -> "TTOOptions":
        """Options from an ``inference:`` YAML section; unknown keys are ignored here (they
        belong to the segmentation options), ``None`` overrides are skipped."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in (section or {}).items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None and k in names})
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.early_stop_patience < 0:
            raise ValueError(f"early_stop_patience must be >= 0, got {self.early_stop_patience}")


@dataclass
class TTOResult:
    ws: torch.Tensor  # [N, num_ws, w_dim] at the best loss
    label_logits: torch.Tensor  # [N, L, S, S]
    image: torch.Tensor  # [N, 1, S, S] the generator's reconstruction
    loss: torch.Tensor  # [N] objective at the returned ws
    recon_mse: torch.Tensor  # [N] MSE of the reconstruction (out-of-domain indicator)
    steps_run: torch.Tensor  # [N] optimisation steps each slice took
    history: list[float] = field(default_factory=list)  # summed loss per step (diagnostics)


def learning_rate(step: int, steps: int, options: TTOOptions) -> float:
    """StyleGAN projector schedule for step ``step`` of ``steps`` (0-based)."""
    t = step / max(1, steps)
    ramp = min(1.0, (1.0 - t) / options.lr_rampdown) if options.lr_rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if options.lr_rampup > 0:
        # (step + 1): the projector's first step has lr 0, a waste when K is small.
        ramp *= min(1.0, (step + 1) / max(1, steps) / options.lr_rampup)
    return options.lr * ramp


@contextlib.contextmanager
def _frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Parameters need no gradients during inversion; restore their flags afterwards."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class _Objective:
    """Per-slice loss of a batch of ws against their target slices."""

    def __init__(self, generator: nn.Module, encoder: nn.Module | None, options: TTOOptions,
                 device: torch.device):
        self.G, self.E, self.options, self.device = generator, encoder, options, device

    def __call__(self, ws: torch.Tensor, target: torch.Tensor):
        o = self.options
        with _autocast(self.device, o.bf16):
            image, logits = self.G.synthesis(ws, noise_mode=o.noise_mode)
        image, logits = image.float(), logits.float()
        loss = reconstruction_loss_per_slice(image, target, o.perceptual_weight, o.mse_weight)
        if o.encoder_weight and self.E is not None:
            # As in SemanticGAN's inference: the re-encoding is a target, not a path for gradients
            # (cheaper: no backward pass through the encoder).
            with torch.no_grad(), _autocast(self.device, o.bf16):
                w_again = self.E(image)
            loss = loss + o.encoder_weight * (ws - w_again.float()).square().flatten(1).mean(1)
        return loss, image, logits


def invert(generator: nn.Module, encoder: nn.Module | None, images: torch.Tensor,
           options: TTOOptions | None = None, ws_init: torch.Tensor | None = None,
           progress: bool = False, desc: str = "optimising") -> TTOResult:
    """Invert ``images [N, 1, S, S]`` (in [-1, 1]); see the module docstring.

    ``ws_init`` replaces the encoder's first guess (then ``encoder`` may be ``None`` unless the
    encoder-consistency term is on). Runs on the generator's device.
    """
    options = options or TTOOptions()
    options.validate()
    device = next(generator.parameters()).device
    images = images.to(device=device, dtype=torch.float32)
    n = images.shape[0]
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[device] if device.type == "cuda" else []))
        torch.manual_seed(options.seed)
        stack.enter_context(_frozen(generator, encoder))
        stack.enter_context(torch.enable_grad())
        if ws_init is None:
            if encoder is None:
                raise ValueError("invert needs an encoder or ws_init")
            with torch.no_grad(), _autocast(device, options.bf16):
                ws_init = encoder(images)
        ws = ws_init.detach().to(device=device, dtype=torch.float32).clone()
        return _optimise(_Objective(generator, encoder, options, device), images, ws, options,
                         progress, desc)


def _optimise(objective: _Objective, images: torch.Tensor, ws: torch.Tensor, options: TTOOptions,
              progress: bool, desc: str) -> TTOResult:
    n = images.shape[0]
    device = images.device
    beta1, beta2 = options.betas
    exp_avg = torch.zeros_like(ws)
    exp_avg_sq = torch.zeros_like(ws)
    best_loss = torch.full((n,), math.inf, device=device)
    best_ws = ws.clone()
    best_image: torch.Tensor | None = None
    best_logits: torch.Tensor | None = None
    since_best = torch.zeros(n, dtype=torch.long, device=device)
    steps_run = torch.zeros(n, dtype=torch.long, device=device)
    active = torch.arange(n, device=device)
    history: list[float] = []

    bar = tqdm(total=options.steps, desc=desc, leave=False, disable=not progress, unit="step")
    # Evaluation t looks at the ws after t updates; the last one (t == steps) only evaluates.
    for t in range(options.steps + 1):
        last = t == options.steps or active.numel() == 0
        if active.numel() == 0:
            break
        w_active = ws[active].requires_grad_(not last)
        if last:
            with torch.no_grad():
                loss, image, logits = objective(w_active, images[active])
        else:
            loss, image, logits = objective(w_active, images[active])
            (grad,) = torch.autograd.grad(loss.sum(), [w_active])
        loss = loss.detach()
        history.append(float(loss.sum()))

        if best_image is None:
            best_image = torch.zeros((n, *image.shape[1:]), device=device)
            best_logits = torch.zeros((n, *logits.shape[1:]), device=device)
        previous = best_loss[active]
        # Any decrease makes a new best; only a decrease by the relative tolerance resets the
        # early-stopping patience (the first evaluation counts as both; inf - inf is nan).
        improved = loss < previous
        significant = (loss < previous - options.early_stop_rel_tol * previous.abs()) | torch.isinf(previous)
        idx = active[improved]
        best_loss[idx] = loss[improved]
        best_ws[idx] = w_active.detach()[improved]
        best_image[idx] = image.detach()[improved]
        best_logits[idx] = logits.detach()[improved]
        since_best[active] = torch.where(significant, 0, since_best[active] + 1)
        if last:
            break

        # Adam, element-wise (torch.optim.Adam's formula), on the active slices only.
        step = t + 1
        lr = learning_rate(t, options.steps, options)
        m = exp_avg[active].mul_(beta1).add_(grad, alpha=1 - beta1)
        v = exp_avg_sq[active].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg[active], exp_avg_sq[active] = m, v
        denom = (v.sqrt() / math.sqrt(1 - beta2 ** step)).add_(1e-8)
        ws[active] = w_active.detach() - (lr / (1 - beta1 ** step)) * m / denom
        steps_run[active] += 1

        if options.early_stop_patience:
            active = active[since_best[active] <= options.early_stop_patience]
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1] / max(1, n):.4f}", active=int(active.numel()))
    bar.close()

    recon = mse_per_slice(best_image, images)
    return TTOResult(ws=best_ws, label_logits=best_logits, image=best_image, loss=best_loss,
                     recon_mse=recon, steps_run=steps_run, history=history)
