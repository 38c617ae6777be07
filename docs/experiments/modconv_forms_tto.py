"""One TTO step per slice (ms, wall, 2 threads) for the modulated-conv forms at several batch sizes."""
import time

import torch

from medsemgan.inference.losses import lncc_loss_per_slice
from medsemgan.inference.model import SegmentationModel
from medsemgan.models.layers import set_modconv_form
from medsemgan.runtime import keep_freed_memory


def step_ms_per_slice(model, generator, n: int, repeats: int = 8) -> float:
    x = torch.randn(n, 1, 128, 128).clamp(-1, 1)
    with torch.no_grad():
        ws = model.encoder(x).float()
    ws.requires_grad_(True)
    times = []
    for r in range(repeats + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image, _ = generator.synthesis(ws, noise_mode="const")
        torch.autograd.grad(lncc_loss_per_slice(image.float(), x).sum(), ws)
        if r > 1:  # two warm-up steps
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / n * 1000


if __name__ == "__main__":
    keep_freed_memory()
    torch.set_num_threads(2)
    model = SegmentationModel.from_bundle()
    for n in (1, 4, 8, 16):
        row = []
        for form in ("auto", "batched"):
            set_modconv_form(model.generator, form)
            row.append(f"{form} {step_ms_per_slice(model, model.generator, n):.1f}")
        print(f"batch {n}: " + " | ".join(row), flush=True)
