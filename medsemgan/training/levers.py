"""CPU/GPU speed levers of the training step, switched by ``training.fast`` / ``training.levers``.

- ``bf16``: autocast to bfloat16 for the adversarial passes (AVX-512 bf16 on CPU, tensor cores on
  GPU). Losses are reduced in float32.
- ``bf16_regularizers``: also autocast the R1 / path-length passes (double backward in bf16;
  the penalties themselves are reduced in float32). Measured about 10 % of a step on cpu128.
- ``channels_last``: NHWC memory layout for the discriminators and their inputs (on cpu128 about
  20 % off the discriminator phases, measured per phase in CPU seconds).
- ``channels_last_generator``: NHWC for the generator too, with every modulated convolution in
  the batched form (the grouped form folds the batch into the channels, which NHWC cannot keep
  without copies). Pays off since the resampling and 1x1 head paths keep NHWC end to end
  (medsemgan.ops.upfirdn2d.ConvBackend, layers.modulated_conv2d); before that, NHWC made the
  generator slower. CPU measurement in docs/benchmarks.md ("train"); the CUDA upfirdn2d kernel
  works in NCHW, so paper256 (the GPU configuration) turns it off.
- ``paired_d_pass``: the image discriminator step runs reals and fakes as one batch of twice
  the size, interleaved so that every minibatch-std group holds only reals or only fakes (the
  same groups as two passes; ``ImageDiscriminator.pairs_in_one_pass`` says when that holds).
- ``shared_fakes``: one generated batch per iteration, made with the generator's graph, serves
  both discriminator phases (detached) and the generator phase: one generator forward instead of
  two. The only lever that changes the algorithm's sampling (the generator phase reuses the
  latents the discriminators saw instead of drawing new ones), so it is named on its own.
- ``fused_ops``: the compiled bias_act / upfirdn2d (medsemgan.ops) and PyTorch's fused Adam
  kernel for the three optimisers; off forces ``MEDSEMGAN_OPS=reference`` for the duration of a
  step and the per-tensor Adam loop.
- ``compile``: torch.compile; see docs/training.md for why it stays off.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from medsemgan.ops.loader import ENV_MODE


@contextlib.contextmanager
def ops_mode(fused: bool) -> Iterator[None]:
    """Force the reference ops while inside when ``fused`` is False; restore the setting after."""
    if fused:
        yield
        return
    previous = os.environ.get(ENV_MODE)
    os.environ[ENV_MODE] = "reference"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_MODE, None)
        else:
            os.environ[ENV_MODE] = previous


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` (a no-op context when disabled)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def generator_channels_last(generator: torch.nn.Module) -> torch.nn.Module:
    """The ``channels_last_generator`` lever: NHWC weights and activations, batched modconv form."""
    from medsemgan.models.layers import set_modconv_form

    apply_memory_format(generator, True)
    set_modconv_form(generator, "batched")
    return generator


def apply_memory_format(module: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """With ``channels_last``, convert 4-D parameters and (generator blocks) their activations.

    Off leaves the module as built (its own ``channels_last_from`` setting, if any, stands).
    """
    if not channels_last:
        return module
    module.to(memory_format=torch.channels_last)
    for sub in module.modules():
        # SynthesisBlock converts its activations when this flag is set (models layer).
        if isinstance(getattr(sub, "channels_last", None), bool):
            sub.channels_last = True
    return module
