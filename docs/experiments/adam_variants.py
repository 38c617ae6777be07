"""Optimiser step time (ms, one thread) of the cpu128 networks: per-tensor loop, foreach, fused."""
import time

import torch

from medsemgan.training.config import load_config
from medsemgan.training.run import build_networks

if __name__ == "__main__":
    torch.set_num_threads(1)
    for name, net in zip(("generator", "image D", "joint D"), build_networks(load_config("cpu128"))):
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        times = {}
        for variant, kwargs in (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.99), **kwargs)
            for _ in range(3):
                opt.step()
            start = time.process_time()
            for _ in range(20):
                opt.step()
            times[variant] = round((time.process_time() - start) / 20 * 1000, 2)
        print(name, sum(p.numel() for p in net.parameters()), "parameters", times)
