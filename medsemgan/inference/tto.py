"""Test-time optimisation: invert slices into the generator's W+ space, read the label off it.

For a batch of slices ``x``: ``w+ <- E(x)``, then ``steps`` Adam steps on ``w+`` minimising
``perceptual + 0.1 * MSE`` between ``G_image(w+)`` and ``x`` (plus an optional encoder-consistency
term ``||w+ - E(G_image(w+))||^2``), with StyleGAN's projector learning-rate ramp (linear ramp-up,
cosine ramp-down). The label is ``G_label(w+)`` at the best ``w+`` seen.

With ``optimize_noise`` each slice also gets its own noise maps (one per noise input of the
synthesis network), optimised jointly with ``w+`` as in StyleGAN2's projector: a multi-scale
autocorrelation penalty keeps them noise-like and they are re-normalised to zero mean and unit
variance after every step. The penalty shapes the noise only; the best-state selection and the
early stopping compare the reconstruction objective, as without noise (the penalty, weighted 1e5,
would drown it).

Design points, each tested:
- Losses are summed over slices and Adam runs per element, so a slice's trajectory is the same
  whether it is optimised alone or with others (up to floating-point rounding of batched convs).
- Early stopping is per slice: a slice whose loss has not improved for ``patience`` steps is
  frozen and leaves the batch (the batch shrinks, so later steps get cheaper); the batch ends when
  every slice has stopped. Freezing keeps the batch-independence above.
- Runs under ``torch.enable_grad()`` even when called inside ``torch.no_grad()`` (MONAI
  evaluators call inferers that way).
- Deterministic for a given input and seed: the global RNG is forked and seeded; the initial
  noise maps come from their own generator seeded with ``seed`` and are the same for every slice
  (a slice's start does not depend on its position in the batch).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, fields
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from medsemgan.inference.losses import (PERCEPTUAL_LOSSES, lncc_loss_per_slice, mse_per_slice,
                                        reconstruction_loss_per_slice)
from medsemgan.models.layers import MODCONV_SETTINGS, ModulatedConv2d

NOISE_INITS = ("random", "const")
RESTART_STARTS = ("neighbour", "mean")


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
    perceptual: str = "ms_ssim"  # structural term: 'ms_ssim' (SemanticGAN's role for LPIPS) or 'lncc'
    encoder_weight: float = 0.0  # ||w+ - E(G(w+))||^2, E(G(w+)) detached (one encoder forward per step)
    early_stop_patience: int = 0  # 0 = off; else steps without improvement before a slice stops
    early_stop_rel_tol: float = 1e-3  # improvement (fraction of the best loss) that resets patience
    noise_mode: str = "const"  # generator noise; 'const' keeps slices independent and repeatable
    optimize_noise: bool = False  # per-slice noise maps optimised with w+ (overrides noise_mode)
    noise_lr: float = 0.1  # peak Adam lr of the noise maps (same schedule as lr; the projector's 0.1)
    noise_reg_weight: float = 1e5  # multi-scale autocorrelation penalty (the projector's weight)
    noise_init: str = "random"  # 'random': N(0, 1) from seed; 'const': the generator's fixed maps
    bf16: bool = False  # bfloat16 autocast on CPU / CUDA for the generator and encoder
    # Modulated-conv form while optimising ('batched', 'grouped', 'auto'; None: the generator's
    # own). Only w+ needs gradients here, and the batched form's backward is one shared-weight
    # convolution where the grouped form also needs a weight gradient per sample.
    modconv_form: str | None = "batched"
    seed: int = 0
    # Extra starting points per slice, each optimised like the first (the encoder's guess); a
    # slice keeps the start whose objective ends lowest (TTOInferer). 'neighbour': the solved w+
    # of the adjacent slice (above or below) with the lower objective; 'mean': the mean latent.
    restarts: tuple[str, ...] = ()
    # 3-D consistency: weight of the mean squared difference between a slice's w+ and its
    # adjacent slices' (``ws_before``/``ws_after`` beyond the batch's ends). It couples the slices
    # of a batch, so a slice's result then depends on its neighbours (by design); it joins the
    # gradient only, like the noise penalty: selection and early stopping compare the fit.
    smooth_weight: float = 0.0

    @classmethod
    def from_config(cls, section: dict | None, **overrides) -> "TTOOptions":
        """Options from an ``inference:`` YAML section; unknown keys are ignored here (they
        belong to the segmentation options), ``None`` overrides are skipped."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in (section or {}).items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None and k in names})
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        if "restarts" in values:
            restarts = values["restarts"]
            values["restarts"] = (restarts,) if isinstance(restarts, str) else tuple(restarts or ())
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
        # A YAML/CLI string such as "false" would be truthy: insist on a real boolean.
        if not isinstance(self.optimize_noise, bool):
            raise ValueError(f"optimize_noise must be true or false, got {self.optimize_noise!r}")
        if self.noise_lr <= 0:
            raise ValueError(f"noise_lr must be > 0, got {self.noise_lr}")
        if self.noise_reg_weight < 0:
            raise ValueError(f"noise_reg_weight must be >= 0, got {self.noise_reg_weight}")
        if self.perceptual not in PERCEPTUAL_LOSSES:
            raise ValueError(f"perceptual must be one of {sorted(PERCEPTUAL_LOSSES)}, got {self.perceptual!r}")
        if self.noise_init not in NOISE_INITS:
            raise ValueError(f"noise_init must be one of {NOISE_INITS}, got {self.noise_init!r}")
        if self.smooth_weight < 0:
            raise ValueError(f"smooth_weight must be >= 0, got {self.smooth_weight}")
        unknown = [r for r in self.restarts if r not in RESTART_STARTS]
        if unknown:
            raise ValueError(f"restarts must be among {RESTART_STARTS}, got {unknown}")
        if self.modconv_form is not None and self.modconv_form not in MODCONV_SETTINGS:
            raise ValueError(f"modconv_form must be one of {MODCONV_SETTINGS} or null, got {self.modconv_form!r}")


@dataclass
class TTOResult:
    ws: torch.Tensor  # [N, num_ws, w_dim] at the best loss
    label_logits: torch.Tensor  # [N, L, S, S]
    image: torch.Tensor  # [N, 1, S, S] the generator's reconstruction
    loss: torch.Tensor  # [N] objective at the returned ws (without the noise penalty)
    recon_mse: torch.Tensor  # [N] MSE of the reconstruction at the returned ws
    # [N] LNCC loss of the first reconstruction (the encoder's w+, or ws_init) against the slice:
    # a contrast-blind out-of-domain signal that does not depend on the objective or on K
    structure_error: torch.Tensor
    steps_run: torch.Tensor  # [N] optimisation steps each slice took
    history: list[float] = field(default_factory=list)  # summed `loss` per step (diagnostics)
    noise: list[torch.Tensor] | None = None  # optimize_noise: best maps, [N, 1, r, r] per input
    noise_reg: torch.Tensor | None = None  # [N] noise penalty (unweighted) at the best state


def lr_ramp(step: int, steps: int, options: TTOOptions) -> float:
    """StyleGAN projector schedule, as a factor of the peak learning rate."""
    t = step / max(1, steps)
    ramp = min(1.0, (1.0 - t) / options.lr_rampdown) if options.lr_rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if options.lr_rampup > 0:
        # (step + 1): the projector's first step has lr 0, a waste when K is small.
        ramp *= min(1.0, (step + 1) / max(1, steps) / options.lr_rampup)
    return ramp


def learning_rate(step: int, steps: int, options: TTOOptions) -> float:
    """StyleGAN projector schedule for step ``step`` of ``steps`` (0-based)."""
    return options.lr * lr_ramp(step, steps, options)


def noise_regularisation_per_slice(maps: list[torch.Tensor]) -> torch.Tensor:
    """StyleGAN2 projector's noise penalty, per slice: for every map and every scale (halving
    down to 8 px), the squared mean of the map times itself shifted by one pixel in x and in y.
    Zero for white noise; large where a map has picked up image structure."""
    total = maps[0].new_zeros(maps[0].shape[0])
    for noise in maps:
        while True:
            for dim in (2, 3):
                total = total + (noise * noise.roll(1, dims=dim)).flatten(1).mean(1).square()
            if min(noise.shape[-2:]) <= 8:
                break
            noise = F.avg_pool2d(noise, 2)
    return total


def _normalise_per_slice(noise: torch.Tensor) -> torch.Tensor:
    noise = noise - noise.mean(dim=(1, 2, 3), keepdim=True)
    return noise * noise.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()


def _noise_inputs(generator: nn.Module) -> list:
    synthesis = getattr(generator, "synthesis", None)
    inputs = synthesis.noise_inputs() if hasattr(synthesis, "noise_inputs") else []
    if not inputs:
        raise ValueError("optimize_noise needs a generator whose synthesis network takes "
                         "per-sample noise maps (medsemgan.models.generator.SynthesisNetwork)")
    return inputs


def initial_noise(generator: nn.Module, n: int, options: TTOOptions,
                  device: torch.device) -> list[torch.Tensor]:
    """One map per noise input, ``[n, 1, r, r]``, the same for every slice (so a slice starts
    alike alone or in any batch): N(0, 1) from a CPU generator seeded with ``options.seed`` (the
    same maps on any device), standardised like every later step; or the generator's own fixed
    maps unchanged (``noise_init='const'``: the start is exactly the ``noise_mode='const'`` one,
    which the encoder was trained with)."""
    inputs = _noise_inputs(generator)
    if options.noise_init == "const":
        maps = [m.noise_const.detach().float()[None, None] for m in inputs]
    else:
        rng = torch.Generator().manual_seed(options.seed)
        maps = [_normalise_per_slice(torch.randn(1, 1, m.resolution, m.resolution, generator=rng))
                for m in inputs]
    return [m.to(device).expand(n, -1, -1, -1).clone() for m in maps]


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


@contextlib.contextmanager
def _modconv_form(generator: nn.Module, form: str | None) -> Iterator[None]:
    """Run every modulated convolution of ``generator`` in ``form``; restore each layer's after."""
    layers = [m for m in generator.modules() if isinstance(m, ModulatedConv2d)] if form else []
    saved = [m.form for m in layers]
    for m in layers:
        m.form = form
    try:
        yield
    finally:
        for m, previous in zip(layers, saved):
            m.form = previous


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class _Objective:
    """Per-slice loss of a batch of ws against their target slices."""

    def __init__(self, generator: nn.Module, encoder: nn.Module | None, options: TTOOptions,
                 device: torch.device):
        self.G, self.E, self.options, self.device = generator, encoder, options, device

    def __call__(self, ws: torch.Tensor, noise: list[torch.Tensor], target: torch.Tensor):
        """``(fit [N], noise penalty [N] or None, image, logits)``; the fit is what selection and
        early stopping compare, ``fit + noise_reg_weight * penalty`` what the gradient descends."""
        o = self.options
        with _autocast(self.device, o.bf16):
            if noise:
                image, logits = self.G.synthesis(ws, noise_mode=o.noise_mode, noise=noise)
            else:
                image, logits = self.G.synthesis(ws, noise_mode=o.noise_mode)
        image, logits = image.float(), logits.float()
        loss = reconstruction_loss_per_slice(image, target, o.perceptual_weight, o.mse_weight,
                                             o.perceptual)
        if o.encoder_weight and self.E is not None:
            # As in SemanticGAN's inference: the re-encoding is a target, not a path for gradients
            # (cheaper: no backward pass through the encoder).
            with torch.no_grad(), _autocast(self.device, o.bf16):
                w_again = self.E(image)
            loss = loss + o.encoder_weight * (ws - w_again.float()).square().flatten(1).mean(1)
        penalty = noise_regularisation_per_slice(noise) if noise else None
        return loss, penalty, image, logits


def smoothness_per_slice(ws: torch.Tensor, before: torch.Tensor | None = None,
                         after: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]``: for each slice of ``ws [N, num_ws, w_dim]`` (adjacent slices in order), the summed
    mean squared difference to its neighbours; ``before``/``after`` (``[num_ws, w_dim]``) are the
    neighbours beyond the first and last slice, held fixed."""
    penalty = ws.new_zeros(ws.shape[0])
    if ws.shape[0] > 1:
        step = (ws[1:] - ws[:-1]).square().flatten(1).mean(1)
        penalty = penalty + F.pad(step, (1, 0)) + F.pad(step, (0, 1))
    if before is not None:
        penalty = penalty + F.pad((ws[:1] - before).square().flatten(1).mean(1), (0, ws.shape[0] - 1))
    if after is not None:
        penalty = penalty + F.pad((ws[-1:] - after).square().flatten(1).mean(1), (ws.shape[0] - 1, 0))
    return penalty


def invert(generator: nn.Module, encoder: nn.Module | None, images: torch.Tensor,
           options: TTOOptions | None = None, ws_init: torch.Tensor | None = None,
           progress: bool = False, desc: str = "optimising",
           ws_before: torch.Tensor | None = None, ws_after: torch.Tensor | None = None) -> TTOResult:
    """Invert ``images [N, 1, S, S]`` (in [-1, 1]); see the module docstring.

    ``ws_init`` replaces the encoder's first guess (then ``encoder`` may be ``None`` unless the
    encoder-consistency term is on). ``ws_before``/``ws_after``: the solved w+ of the slices just
    before and after this batch, for ``options.smooth_weight``. Runs on the generator's device.
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
        stack.enter_context(_modconv_form(generator, options.modconv_form))
        stack.enter_context(torch.enable_grad())
        if ws_init is None:
            if encoder is None:
                raise ValueError("invert needs an encoder or ws_init")
            with torch.no_grad(), _autocast(device, options.bf16):
                ws_init = encoder(images)
        ws = ws_init.detach().to(device=device, dtype=torch.float32).clone()
        noise = initial_noise(generator, n, options, device) if options.optimize_noise else []
        anchors = tuple(None if a is None else a.detach().to(device=device, dtype=torch.float32)
                        for a in (ws_before, ws_after))
        return _optimise(_Objective(generator, encoder, options, device), images, ws, noise, options,
                         progress, desc, anchors)


def _adam_step(param: torch.Tensor, current: torch.Tensor, grad: torch.Tensor,
               exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, active: torch.Tensor,
               lr: float, step: int, betas: tuple[float, float]) -> torch.Tensor:
    """One Adam step (torch.optim.Adam's formula, element-wise) on the rows ``active`` of
    ``param``, whose current values are ``current``; returns the new rows."""
    beta1, beta2 = betas
    m = exp_avg[active].mul_(beta1).add_(grad, alpha=1 - beta1)
    v = exp_avg_sq[active].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg[active], exp_avg_sq[active] = m, v
    denom = (v.sqrt() / math.sqrt(1 - beta2 ** step)).add_(1e-8)
    return current.detach() - (lr / (1 - beta1 ** step)) * m / denom


def _optimise(objective: _Objective, images: torch.Tensor, ws: torch.Tensor,
              noise: list[torch.Tensor], options: TTOOptions, progress: bool, desc: str,
              anchors: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)) -> TTOResult:
    n = images.shape[0]
    device = images.device
    params = [ws, *noise]  # optimised jointly; row i of each belongs to slice i
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    best_loss = torch.full((n,), math.inf, device=device)
    best_params = [p.clone() for p in params]
    best_penalty = torch.zeros(n, device=device) if noise else None
    best_image: torch.Tensor | None = None
    best_logits: torch.Tensor | None = None
    structure_error: torch.Tensor | None = None
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
        current = [p[active].requires_grad_(not last) for p in params]
        if last:
            with torch.no_grad():
                loss, penalty, image, logits = objective(current[0], current[1:], images[active])
        else:
            loss, penalty, image, logits = objective(current[0], current[1:], images[active])
            descent = loss if penalty is None else loss + options.noise_reg_weight * penalty
            if options.smooth_weight:
                # stopped slices take part with their best w+, held fixed
                volume = best_params[0].clone()
                volume[active] = current[0]
                descent = descent + options.smooth_weight * smoothness_per_slice(volume, *anchors)[active]
            grads = torch.autograd.grad(descent.sum(), current)
        loss = loss.detach()
        history.append(float(loss.sum()))

        if best_image is None:
            best_image = torch.zeros((n, *image.shape[1:]), device=device)
            with torch.no_grad():
                structure_error = lncc_loss_per_slice(image.detach(), images)
            best_logits = torch.zeros((n, *logits.shape[1:]), device=device)
        previous = best_loss[active]
        # Any decrease makes a new best; only a decrease by the relative tolerance resets the
        # early-stopping patience (the first evaluation counts as both; inf - inf is nan).
        improved = loss < previous
        significant = (loss < previous - options.early_stop_rel_tol * previous.abs()) | torch.isinf(previous)
        idx = active[improved]
        best_loss[idx] = loss[improved]
        for best, value in zip(best_params, current):
            best[idx] = value.detach()[improved]
        if best_penalty is not None:
            best_penalty[idx] = penalty.detach()[improved]
        best_image[idx] = image.detach()[improved]
        best_logits[idx] = logits.detach()[improved]
        since_best[active] = torch.where(significant, 0, since_best[active] + 1)
        if last:
            break

        # Adam on the active slices only; noise maps go back to zero mean, unit variance.
        step = t + 1
        lr = learning_rate(t, options.steps, options)
        noise_lr = options.noise_lr * lr_ramp(t, options.steps, options)
        for k, (param, value, grad) in enumerate(zip(params, current, grads)):
            updated = _adam_step(param, value, grad, exp_avg[k], exp_avg_sq[k], active,
                                 lr if k == 0 else noise_lr, step, options.betas)
            param[active] = updated if k == 0 else _normalise_per_slice(updated)
        steps_run[active] += 1

        if options.early_stop_patience:
            active = active[since_best[active] <= options.early_stop_patience]
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1] / max(1, n):.4f}", active=int(active.numel()))
    bar.close()

    recon = mse_per_slice(best_image, images)
    return TTOResult(ws=best_params[0], label_logits=best_logits, image=best_image, loss=best_loss,
                     recon_mse=recon, structure_error=structure_error, steps_run=steps_run, history=history,
                     noise=best_params[1:] if noise else None, noise_reg=best_penalty)
