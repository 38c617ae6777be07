import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_gloo_processes_stay_in_sync(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["steps"] == r1["steps"] == 4
    # Different data on each rank ...
    assert not torch.equal(r0["first_unlabeled"], r1["first_unlabeled"])
    # ... but identical weights after every step's gradient all-reduce.
    for net in ("G", "D_image", "D_joint", "G_ema"):
        for key, value in r0[net].items():
            assert torch.equal(value, r1[net][key]), f"{net}.{key} differs between ranks"
    assert torch.equal(r0["pl_mean"], r1["pl_mean"])
    # The weights did train (not a run that never stepped): every optimiser took its steps ...
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2 and ckpt["images_seen"] == 16
    steps = {name: sorted({int(state["step"]) for state in ckpt[name]["state"].values()})
             for name in ("opt_G", "opt_D_image", "opt_D_joint")}
    # 4 iterations of batch 4 (16 images), each a main step per network, plus a lazy
    # regularisation step (R1 for both discriminators, path length for G) every 2nd iteration
    assert steps == {"opt_G": [6], "opt_D_image": [6], "opt_D_joint": [6]}
    # ... the generator moved away from its average (G_ema starts as a copy and lags behind) ...
    moved = [k for k, v in r0["G"].items() if v.is_floating_point() and not torch.equal(v, r0["G_ema"][k])]
    assert len(moved) > len(r0["G"]) // 2
    # ... and the path-length regulariser ran (its running mean starts at 0)
    assert r0["pl_mean"].item() > 0
