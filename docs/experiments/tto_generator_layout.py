"""One TTO step per slice (ms) with the generator in NCHW vs NHWC (batched form in both)."""
import copy

import torch

from medsemgan.inference.model import SegmentationModel
from medsemgan.models.layers import set_modconv_form
from medsemgan.runtime import keep_freed_memory
from medsemgan.training.levers import generator_channels_last

from modconv_forms_tto import step_ms_per_slice

if __name__ == "__main__":
    keep_freed_memory()
    torch.set_num_threads(2)
    model = SegmentationModel.from_bundle()
    nhwc = generator_channels_last(copy.deepcopy(model.generator))
    set_modconv_form(model.generator, "batched")
    for _ in range(2):
        for name, generator in (("NCHW", model.generator), ("NHWC", nhwc)):
            print(name, " | ".join(f"batch {n}: {step_ms_per_slice(model, generator, n):.1f}" for n in (1, 16)), flush=True)
