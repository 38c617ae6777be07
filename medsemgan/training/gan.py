"""The semi-supervised GAN step (MISSION.md §1) and its state.

One iteration, every phase with its own Adam step:

1. image D on an **unlabeled** real batch vs generated images: non-saturating logistic loss;
   every ``r1_interval_image`` iterations an extra R1 step on the reals (lazy regularisation);
2. joint D on a **labeled** real batch (the small labeled set cycles) vs generated pairs: hinge
   loss; every ``r1_interval_joint`` iterations an R1 step on the real (image, mask) pairs;
3. generator: image side non-saturating logistic; joint side hinge + L1 feature matching on
   ``concat(fake_image.detach(), fake_mask)``, so the joint D reaches the generator only through
   the label output; every ``pl_interval`` iterations a path-length step;
4. EMA of the generator.

Both discriminator phases score generated samples from one shared no-grad generator pass.

Each phase sets ``requires_grad`` of all three networks itself, so a regulariser can never run
against frozen weights (the official code's image-D R1 did, and changed nothing).
Masks enter the joint D in [-1, 1]: real ``2m - 1``, generated ``2 sigmoid(logits) - 1``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from medsemgan.training import losses
from medsemgan.training.augment import AugmentConfig, augment_pair
from medsemgan.training.config import levers_from, to_json
from medsemgan.training.distributed import (
    DistInfo,
    all_reduce_mean,
    average_gradients,
    broadcast_module,
    sync_float_buffers,
)
from medsemgan.training.ema import ema_beta, make_ema, update_ema
from medsemgan.training.levers import (apply_memory_format, autocast, generator_channels_last, memory_format,
                                       ops_mode)
from medsemgan.training.sampler import CyclingSampler

log = logging.getLogger(__name__)


def _set_trainable(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _per_rank(total: int, info: DistInfo, what: str) -> int:
    if total % info.world_size:
        raise ValueError(f"training.{what}={total} is not divisible by {info.world_size} processes")
    return total // info.world_size


def rank_seed(seed: int, rank: int) -> int:
    """Seed of a rank's training randomness (latents, noise, augmentation); differs per rank."""
    return (seed * 7919 + rank * 104_729 + 1) % (2**63 - 1)


class GanTrainer:
    """Networks, optimisers and counters of one process; :meth:`step` runs one iteration."""

    def __init__(
        self,
        config: dict,
        models: tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module],
        tensors: dict[str, torch.Tensor],
        info: DistInfo | None = None,
    ):
        self.config = config
        self.t = t = config["training"]
        self.info = info or DistInfo()
        self.device = self.info.device
        self.levers = levers_from(t)
        self.augment_cfg = AugmentConfig.from_dict(t["augment"])
        self.unlabeled_bs = _per_rank(int(t["batch_size"]), self.info, "batch_size")
        self.labeled_bs = _per_rank(int(t["labeled_batch_size"]), self.info, "labeled_batch_size")
        self.global_batch = int(t["batch_size"])

        G, D_image, D_joint = models
        self.G = G.to(self.device).train()
        self.D_image = D_image.to(self.device).train()
        self.D_joint = D_joint.to(self.device).train()
        for net in (self.G, self.D_image, self.D_joint):
            broadcast_module(net, self.info)
        for net in (self.D_image, self.D_joint):
            apply_memory_format(net, self.levers["channels_last"])
        if self.levers["channels_last_generator"]:
            generator_channels_last(self.G)
        self.G_ema = make_ema(self.G)
        self.pl_mean = torch.zeros([], device=self.device)

        lr, betas, eps = float(t["lr"]), tuple(float(b) for b in t["betas"]), float(t["eps"])

        # PyTorch's fused Adam kernel (one pass over each tensor instead of a dozen element-wise
        # ops): 2.7-2.9x faster optimiser steps on cpu128's networks; part of the fused_ops lever.
        fused_adam = self.levers["fused_ops"] and self.device.type in ("cpu", "cuda")

        def adam(module, interval):
            lr_c, betas_c = losses.lazy_adam_hyperparams(lr, betas, interval)
            return torch.optim.Adam(module.parameters(), lr=lr_c, betas=tuple(float(b) for b in betas_c),
                                    eps=eps, fused=fused_adam or None)

        self.opt_G = adam(self.G, int(t["pl_interval"]) if float(t["pl_weight"]) > 0 else 0)
        self.opt_D_image = adam(self.D_image, int(t["r1_interval_image"]) if float(t["r1_gamma_image"]) > 0 else 0)
        self.opt_D_joint = adam(self.D_joint, int(t["r1_interval_joint"]) if float(t["r1_gamma_joint"]) > 0 else 0)

        self._set_data(tensors)
        self.step_index = 0  # iterations done
        self.images_seen = 0  # real unlabeled images shown to D_image, summed over ranks

    # --- data ----------------------------------------------------------------------------------

    def _set_data(self, tensors: dict[str, torch.Tensor]) -> None:
        res = self.G.resolution
        for key in ("unlabeled", "labeled_image", "labeled_mask"):
            x = tensors.get(key)
            if x is None or x.ndim != 4 or tuple(x.shape[2:]) != (res, res) or x.shape[0] == 0:
                shape = None if x is None else tuple(x.shape)
                raise ValueError(f"training tensor {key!r} must be [N, C, {res}, {res}] with N > 0, got {shape}")
        if tensors["labeled_image"].shape[0] != tensors["labeled_mask"].shape[0]:
            raise ValueError("labeled_image and labeled_mask differ in length")
        self.unlabeled = tensors["unlabeled"].to(self.device, torch.float32)
        self.labeled_image = tensors["labeled_image"].to(self.device, torch.float32)
        self.labeled_mask = tensors["labeled_mask"].to(self.device, torch.float32)
        seed, rank = int(self.t["seed"]), self.info.rank
        self.unlabeled_sampler = CyclingSampler(len(self.unlabeled), self.unlabeled_bs, seed, rank, stream=0)
        self.labeled_sampler = CyclingSampler(len(self.labeled_image), self.labeled_bs, seed, rank, stream=1)

    def _mf(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=memory_format(self.levers["channels_last"]))

    def unlabeled_batch(self, step: int) -> torch.Tensor:
        return self._mf(self.unlabeled[self.unlabeled_sampler.indices(step).to(self.device)])

    def labeled_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.labeled_sampler.indices(step).to(self.device)
        return self._mf(self.labeled_image[idx]), self._mf(self.labeled_mask[idx])

    # --- building blocks -----------------------------------------------------------------------

    def _phase(self, trainable: torch.nn.Module | None) -> None:
        for net in (self.G, self.D_image, self.D_joint):
            _set_trainable(net, net is trainable)

    def _amp(self, regulariser: bool = False):
        on = self.levers["bf16_regularizers"] if regulariser else self.levers["bf16"]
        return autocast(self.device, on)

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.G.z_dim, device=self.device)

    def _generate(self, n: int, update_w_avg: bool = False):
        ws = self.G.sample_ws(
            self._latents(n), style_mixing_prob=float(self.t["style_mixing"]), update_w_avg=update_w_avg
        )
        image, logits = self.G.synthesis(ws)
        return ws, image, logits

    def _augment(self, image, mask=None):
        return augment_pair(image, mask, self.augment_cfg)

    def _apply(self, loss: torch.Tensor, module: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(module.parameters(), self.info)
        opt.step()

    @staticmethod
    def real_mask_input(mask01: torch.Tensor) -> torch.Tensor:
        return mask01 * 2 - 1

    @staticmethod
    def fake_mask_input(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) * 2 - 1

    # --- phases --------------------------------------------------------------------------------

    def discriminator_fakes(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One no-grad batch of generated (image, label logits) for both discriminator phases.

        The image D step does not change G, so the joint D may see samples of the same batch:
        one generator forward per iteration instead of two, same distribution.
        """
        with torch.no_grad(), self._amp():
            _, image, logits = self._generate(n)
        return self._mf(image), self._mf(logits)

    def _iteration_fakes(self):
        """(image, logits) for both discriminator phases, and what the generator phase reuses.

        Without shared_fakes: one no-grad batch for the discriminators; the generator phase draws
        its own. With it: one batch generated with G's graph serves all three phases (the
        discriminators see it detached; G does not change before its own phase, so its forward
        would give the same images for the same latents): one generator forward per iteration
        instead of two. Unlike the other levers this changes the sampling, not only the speed:
        the generator phase trains on the latents the discriminators just saw.
        """
        n = max(self.unlabeled_bs, self.labeled_bs)
        if not self.levers["shared_fakes"]:
            return (*self.discriminator_fakes(n), None)
        self._phase(self.G)
        with self._amp():
            _, image, logits = self._generate(n, update_w_avg=True)
        generated = (self._mf(image[: self.unlabeled_bs]), self._mf(logits[: self.unlabeled_bs]))
        return self._mf(image.detach()), self._mf(logits.detach()), generated

    def d_image_step(self, real: torch.Tensor, fake: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self._phase(self.D_image)
        if fake is None:
            fake = self.discriminator_fakes(real.shape[0])[0]
        with self._amp():
            real, fake = self._augment(real)[0], self._augment(fake)[0]
            n = real.shape[0]
            # The minibatch-std layer must not mix reals and fakes: separate passes, or one pass
            # over both interleaved when that keeps its groups pure (the paired_d_pass lever).
            if self.levers["paired_d_pass"] and fake.shape == real.shape and self.D_image.pairs_in_one_pass(n):
                logits = self.D_image(self._mf(torch.stack([real, fake], dim=1).flatten(0, 1)))
                real_logits, fake_logits = logits[0::2], logits[1::2]
            else:
                real_logits = self.D_image(real)
                fake_logits = self.D_image(fake)
            loss = losses.logistic_d_loss(real_logits, fake_logits)
        self._apply(loss, self.D_image, self.opt_D_image)
        return {
            "loss/D_image": loss.detach(),
            "scores/image_real": real_logits.detach().float().mean(),
            "scores/image_fake": fake_logits.detach().float().mean(),
        }

    def d_image_r1_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        self._phase(self.D_image)
        real = real.detach().requires_grad_(True)
        with self._amp(regulariser=True):
            logits = self.D_image(self._augment(real)[0])
            penalty = losses.r1_penalty(logits, [real])
        interval = int(self.t["r1_interval_image"])
        self._apply(penalty * (float(self.t["r1_gamma_image"]) / 2) * interval, self.D_image, self.opt_D_image)
        return {"reg/r1_image": penalty.detach()}

    def d_joint_step(
        self, image: torch.Tensor, mask01: torch.Tensor, fakes: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        self._phase(self.D_joint)
        n = image.shape[0]
        fake_image, fake_logits = fakes if fakes is not None else self.discriminator_fakes(n)
        with self._amp():
            real_pair = self._augment(image, self.real_mask_input(mask01))
            fake_pair = self._augment(fake_image[:n], self.fake_mask_input(fake_logits[:n]))
            # One pass over reals and fakes together (the patch D has no cross-sample layers).
            outputs = self.D_joint(
                self._mf(torch.cat([real_pair[0], fake_pair[0]])), self._mf(torch.cat([real_pair[1], fake_pair[1]]))
            )
            real_out = [o[:n] for o in outputs]
            fake_out = [o[n:] for o in outputs]
            loss = losses.hinge_d_loss(real_out, fake_out)
        self._apply(loss, self.D_joint, self.opt_D_joint)
        return {
            "loss/D_joint": loss.detach(),
            "scores/joint_real": sum(o.detach().float().mean() for o in real_out) / len(real_out),
            "scores/joint_fake": sum(o.detach().float().mean() for o in fake_out) / len(fake_out),
        }

    def d_joint_r1_step(self, image: torch.Tensor, mask01: torch.Tensor) -> dict[str, torch.Tensor]:
        self._phase(self.D_joint)
        image = image.detach().requires_grad_(True)
        mask = self.real_mask_input(mask01).detach().requires_grad_(True)
        with self._amp(regulariser=True):
            outputs = self.D_joint(*self._augment(image, mask))
            penalty = losses.r1_penalty(outputs, [image, mask])
        interval = int(self.t["r1_interval_joint"])
        self._apply(penalty * (float(self.t["r1_gamma_joint"]) / 2) * interval, self.D_joint, self.opt_D_joint)
        return {"reg/r1_joint": penalty.detach()}

    def generator_terms(self, n: int, labeled_image: torch.Tensor, labeled_mask01: torch.Tensor,
                        generated: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The generator's loss terms (no backward): image_adv, joint_adv, feature_matching.

        The joint D sees ``fake_image.detach()``: its terms reach G only through the label head.
        ``generated``: (image, logits) already generated with G's graph (the shared_fakes
        lever); else a new batch of ``n`` is drawn.
        """
        if generated is None:
            _, fake_image, fake_logits = self._generate(n, update_w_avg=True)
        else:
            fake_image, fake_logits = generated
        fake_image, fake_logits = self._mf(fake_image), self._mf(fake_logits)
        image_adv = losses.logistic_g_loss(self.D_image(self._augment(fake_image)[0]))
        fake_pair = self._augment(fake_image.detach(), self.fake_mask_input(fake_logits))
        fake_out, fake_feats = self.D_joint(*fake_pair, return_features=True)
        with torch.no_grad():
            real_pair = self._augment(labeled_image, self.real_mask_input(labeled_mask01))
            _, real_feats = self.D_joint(*real_pair, return_features=True)
        return {
            "image_adv": image_adv,
            "joint_adv": losses.hinge_g_loss(fake_out),
            "feature_matching": losses.feature_matching_loss(real_feats, fake_feats),
        }

    def g_step(self, labeled_image: torch.Tensor, labeled_mask01: torch.Tensor,
               generated: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        self._phase(self.G)
        with self._amp():
            terms = self.generator_terms(self.unlabeled_bs, labeled_image, labeled_mask01, generated)
            loss = (
                terms["image_adv"]
                + float(self.t["joint_weight"]) * terms["joint_adv"]
                + float(self.t["feature_matching_weight"]) * terms["feature_matching"]
            )
        self._apply(loss, self.G, self.opt_G)
        out = {f"loss/G_{k}": v.detach() for k, v in terms.items()}
        out["loss/G"] = loss.detach()
        return out

    def g_path_length_step(self) -> dict[str, torch.Tensor]:
        self._phase(self.G)
        n = max(1, self.unlabeled_bs // int(self.t["pl_batch_shrink"]))
        with self._amp(regulariser=True):
            ws, image, _ = self._generate(n)
            penalty, new_mean = losses.path_length_penalty(
                image, ws, self.pl_mean, float(self.t["pl_decay"]),
                reduce_mean=lambda x: all_reduce_mean(x, self.info),
            )
        self.pl_mean.copy_(new_mean.detach())
        interval = int(self.t["pl_interval"])
        self._apply(penalty * float(self.t["pl_weight"]) * interval, self.G, self.opt_G)
        return {"reg/path_length": penalty.detach(), "reg/pl_mean": self.pl_mean.clone()}

    # --- one iteration -------------------------------------------------------------------------

    def step(self) -> dict[str, torch.Tensor]:
        """One full iteration (both D phases, G phase, their due regularisers, EMA)."""
        t, s = self.t, self.step_index
        stats: dict[str, torch.Tensor] = {}
        with ops_mode(self.levers["fused_ops"]):
            real = self.unlabeled_batch(s)
            lab_image, lab_mask = self.labeled_batch(s)
            fake_image, fake_logits, generated = self._iteration_fakes()
            stats.update(self.d_image_step(real, fake_image[: self.unlabeled_bs]))
            if float(t["r1_gamma_image"]) > 0 and s % int(t["r1_interval_image"]) == 0:
                stats.update(self.d_image_r1_step(real))

            stats.update(self.d_joint_step(lab_image, lab_mask, (fake_image, fake_logits)))
            if float(t["r1_gamma_joint"]) > 0 and s % int(t["r1_interval_joint"]) == 0:
                stats.update(self.d_joint_r1_step(lab_image, lab_mask))

            stats.update(self.g_step(lab_image, lab_mask, generated))
            if float(t["pl_weight"]) > 0 and s % int(t["pl_interval"]) == 0:
                stats.update(self.g_path_length_step())
            self._phase(None)
            # w_avg is tracked from each rank's own latents; average so G stays identical.
            sync_float_buffers(self.G.mapping, self.info)

        self.step_index += 1
        self.images_seen += self.global_batch
        beta = ema_beta(self.global_batch, self.images_seen, float(t["ema_kimg"]), t["ema_rampup"])
        update_ema(self.G_ema, self.G, beta)
        return stats

    # --- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        def cpu(sd):
            return {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in sd.items()}

        return {
            "G": cpu(self.G.state_dict()),
            "D_image": cpu(self.D_image.state_dict()),
            "D_joint": cpu(self.D_joint.state_dict()),
            "G_ema": cpu(self.G_ema.state_dict()),
            "opt_G": self.opt_G.state_dict(),
            "opt_D_image": self.opt_D_image.state_dict(),
            "opt_D_joint": self.opt_D_joint.state_dict(),
            "pl_mean": self.pl_mean.detach().cpu().clone(),
            "step": self.step_index,
            "images_seen": self.images_seen,
            "world_size": self.info.world_size,
            "config": to_json(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D_image.load_state_dict(state["D_image"])
        self.D_joint.load_state_dict(state["D_joint"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D_image.load_state_dict(state["opt_D_image"])
        self.opt_D_joint.load_state_dict(state["opt_D_joint"])
        self.pl_mean.copy_(state["pl_mean"].to(self.device))
        self.step_index = int(state["step"])
        self.images_seen = int(state["images_seen"])

    def total_steps(self) -> int:
        return math.ceil(float(self.t["kimg"]) * 1000 / self.global_batch - 1e-9)
