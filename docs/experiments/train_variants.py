"""CPU s/kimg of training variants, interleaved in one process (one thread).

Variants: ``FORM[+nhwc][:ref]``, e.g. ``auto``, ``batched+nhwc``, ``auto:ref`` (``ref``: every lever
off). FORM is the generator's modulated-conv form; ``+nhwc`` puts the generator in channels_last.
Start from the configuration's levers with ``channels_last_generator`` off, so the variant decides.
Usage: python docs/experiments/train_variants.py auto,batched+nhwc,auto:ref
"""
import sys
import time

from _training_setup import cpu128_one_thread
from medsemgan.bench.train import _make_trainer, _variant_config
from medsemgan.models.layers import set_modconv_form
from medsemgan.training.levers import apply_memory_format
from medsemgan.training.run import seed_everything

if __name__ == "__main__":
    base, initial, tensors = cpu128_one_thread()
    trainers = {}
    for variant in sys.argv[1].split(","):
        name, _, path = variant.partition(":")
        form, _, layout = name.partition("+")
        config = _variant_config(base, path != "ref")
        config["training"]["levers"] = {"channels_last_generator": False}
        seed_everything(0)
        trainer = _make_trainer(config, initial, tensors)
        set_modconv_form(trainer.G, form)
        if layout == "nhwc":
            apply_memory_format(trainer.G, True)
        trainer.step()
        trainers[variant] = trainer
    cpu = dict.fromkeys(trainers, 0.0)
    for _ in range(16):
        for variant, trainer in trainers.items():
            start = time.process_time()
            trainer.step()
            cpu[variant] += time.process_time() - start
    images = 16 * int(base["training"]["batch_size"])
    print({v: round(s / images * 1000, 1) for v, s in cpu.items()}, "CPU s/kimg")
