"""CPU ms per iteration of each training phase (16 iterations, one thread), fast vs reference.
Phases nest: a phase's time includes its backward pass and optimiser step (``_apply``)."""
import collections
import time

from _training_setup import cpu128_one_thread
from medsemgan.bench.train import _make_trainer, _variant_config
from medsemgan.training.run import seed_everything

PHASES = ("discriminator_fakes", "d_image_step", "d_image_r1_step", "d_joint_step", "d_joint_r1_step",
          "g_step", "g_path_length_step")

if __name__ == "__main__":
    base, initial, tensors = cpu128_one_thread()
    result = {}
    for variant in ("fast", "reference"):
        seed_everything(0)
        trainer = _make_trainer(_variant_config(base, variant == "fast"), initial, tensors)
        trainer.step()
        spent = collections.defaultdict(float)
        for phase in PHASES:
            def timed(*args, _fn=getattr(trainer, phase), _phase=phase, **kwargs):
                start = time.process_time()
                out = _fn(*args, **kwargs)
                spent[_phase] += time.process_time() - start
                return out
            setattr(trainer, phase, timed)
        start = time.process_time()
        for _ in range(16):
            trainer.step()
        spent["total"] = time.process_time() - start
        result[variant] = {k: v / 16 * 1000 for k, v in spent.items()}
    for phase in (*PHASES, "total"):
        print(f"{phase:22s} fast {result['fast'].get(phase, 0):7.1f}  reference {result['reference'].get(phase, 0):7.1f} ms/iteration")
