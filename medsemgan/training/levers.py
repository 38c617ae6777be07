"""CPU/GPU speed levers of the training step, switched by ``training.fast`` / ``training.levers``.

- ``bf16``: autocast to bfloat16 for the adversarial passes (AVX-512 bf16 on CPU, tensor cores on
  GPU). Losses are reduced in float32.
- ``bf16_regularizers``: also autocast the R1 / path-length passes (double backward in bf16;
  the penalties themselves are reduced in float32). Measured about 10 % of a step on cpu128.
- ``channels_last``: NHWC memory layout for the discriminators and their inputs. The generator
  keeps its own setting (``model.generator.channels_last_from``): on cpu128 NHWC made the
  discriminator phases about 20 % faster but the generator slower (its resampling ops then pay
  layout copies), measured per phase in CPU seconds.
- ``fused_ops``: the compiled bias_act / upfirdn2d (medsemgan.ops); off forces
  ``MEDSEMGAN_OPS=reference`` for the duration of a step.
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
