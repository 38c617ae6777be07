"""Speed levers chosen by a quick measurement on this CPU, cached per CPU model.

A lever that pays on one CPU can lose on another: the compiled element-wise ops gave the fused fp32
generator step 2.3x on an AMD EPYC and 0.79-0.85x the reference on an Intel Xeon of the same size
(docs/benchmarks.md). So ``training.levers: {fused_ops: probe}`` (any lever may say ``probe``)
times a few training iterations of the run's own model with the lever on and off, alternating,
keeps the faster, and remembers the answer in ``<cache>/lever_probes.json`` under the CPU model,
the torch version and the model configuration, so the next run on the same kind of machine pays
nothing. Under several processes rank 0 decides and tells the others.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist

from medsemgan.io_utils import atomic_path
from medsemgan.machine import cpu_model

log = logging.getLogger(__name__)

PROBE = "probe"
WARMUP_STEPS = 2
TIMED_STEPS = 4


def probed_levers(training: dict) -> list[str]:
    return sorted(k for k, v in (training.get("levers") or {}).items() if v == PROBE)


def probe_key(config: dict, lever: str, device: torch.device) -> str:
    model = json.dumps(config.get("model", {}), sort_keys=True)
    what = f"{device.type}|{cpu_model()}|torch {torch.__version__}|{lever}|{hashlib.sha256(model.encode()).hexdigest()[:12]}"
    return what


def _cache_file() -> Path:
    from medsemgan.paths import cache_dir

    return cache_dir() / "lever_probes.json"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def measure_lever(config: dict, lever: str, device: torch.device) -> dict:
    """Seconds per iteration with ``lever`` on and off (best of alternating timed steps)."""
    from medsemgan.training.gan import GanTrainer
    from medsemgan.training.run import build_networks
    from medsemgan.training.synthetic import synthetic_tensors

    trainers = {}
    for value in (True, False):
        variant = copy.deepcopy(config)
        variant["training"]["levers"] = {**(variant["training"].get("levers") or {}), lever: value}
        for other in probed_levers(variant["training"]):
            variant["training"]["levers"][other] = True  # other probed levers at their fast default
        variant["training"]["progress"] = variant["training"]["tensorboard"] = False
        G, D_image, D_joint = build_networks(variant)
        tensors = synthetic_tensors(G.resolution, 16, 4, seed=0)
        trainers[value] = GanTrainer(variant, (G, D_image, D_joint), tensors)
    times: dict[bool, list[float]] = {True: [], False: []}
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        for value, trainer in trainers.items():
            started = time.perf_counter()
            trainer.step()
            if step >= WARMUP_STEPS:
                times[value].append(time.perf_counter() - started)
    on, off = min(times[True]), min(times[False])
    return {"on_s": round(on, 4), "off_s": round(off, 4), "use": bool(on <= off)}


def resolve_probes(config: dict, device: torch.device, is_main: bool = True, distributed: bool = False) -> dict:
    """``config`` with every ``probe`` lever replaced by the faster setting on this machine."""
    levers = probed_levers(config["training"])
    if not levers:
        return config
    decisions: dict[str, bool] = {}
    if is_main:
        path = _cache_file()
        cache = _read_cache(path)
        for lever in levers:
            key = probe_key(config, lever, device)
            if key not in cache:
                log.info("probing lever %s on %s (cached afterwards in %s)", lever, cpu_model(), path)
                cache[key] = measure_lever(config, lever, device) | {"date": time.strftime("%Y-%m-%d")}
                with atomic_path(path) as tmp:
                    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            decisions[lever] = bool(cache[key]["use"])
            log.info("lever %s: %s (probe: on %.3f s, off %.3f s per iteration)", lever,
                     "on" if decisions[lever] else "off", cache[key]["on_s"], cache[key]["off_s"])
    if distributed:
        box = [decisions]
        dist.broadcast_object_list(box, src=0)
        decisions = box[0]
    resolved = copy.deepcopy(config)
    resolved["training"]["levers"] = {**resolved["training"]["levers"], **decisions}
    return resolved
