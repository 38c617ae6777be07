"""``medsemgan bench model``: size, FLOPs and step times of the networks, per configuration.

For each configuration: parameter counts, forward FLOPs per image (convolutions and matrix
products, counted by ``torch.utils.flop_counter``), and the wall time of one generator step
(G forward + both discriminators + backward), one image-discriminator step and one
joint-discriminator step, with the fused op path and the reference op path measured in the same
run, plus the two modulated-convolution forms side by side. ``speedup`` is reference time / fused
time of the generator step of the first configuration. Steps are unregularised (no R1, no path
length), as in the cost figures of MISSION.md section 7.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from medsemgan.models.build import build_models
from medsemgan.models.config import load_model_config
from medsemgan.models.generator import count_parameters
from medsemgan.models.layers import set_modconv_form

OPS_ENV = "MEDSEMGAN_OPS"
IMPLS = ("fused", "reference")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", default="cpu128,paper256", help="comma-separated model configurations")
    parser.add_argument("--batch", type=int, default=4, help="batch size for the small configurations")
    parser.add_argument("--large-batch", type=int, default=1, help="batch size for configurations above 128 px")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    parser.add_argument("--large-repeats", type=int, default=1, help="timed repeats above 128 px")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-forms", action="store_true", help="skip the modulated-conv form comparison")
    parser.add_argument("--seed", type=int, default=0)


@contextlib.contextmanager
def ops_impl(impl: str):
    """Select the op path for everything called inside: 'reference' forces the pure-PyTorch ops
    through the documented environment variable; 'fused' leaves the automatic choice."""
    old = os.environ.get(OPS_ENV)
    if impl == "reference":
        os.environ[OPS_ENV] = "reference"
    else:
        os.environ.pop(OPS_ENV, None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(OPS_ENV, None)
        else:
            os.environ[OPS_ENV] = old


def resolved_impl() -> str:
    """The op mode in force (``MEDSEMGAN_OPS`` as the op layer reads it)."""
    try:
        from medsemgan.ops import loader  # the op layer's dispatcher
    except ImportError:
        return "reference (no compiled op layer)"
    mode = getattr(loader, "mode", None)
    return str(mode()) if callable(mode) else "unknown"


def _median_time(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) of ``repeats`` calls after one warm-up call.

    CPU time is reported beside wall time because the machines this runs on are shared: with
    other jobs running, wall time of a multi-threaded step inflates by large factors (OpenMP
    threads wait on each other), while single-thread CPU time stays put.
    """
    fn()  # warm-up: allocator, lazily built extensions, oneDNN primitive caches
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


# Profiler event names of the dense linear algebra; everything else in a step is element-wise
# work, resampling filters and glue: what the fused ops exist to speed up.
_DENSE_OPS = ("conv", "mm", "linear", "matmul")


def _is_fir_filter(event) -> bool:
    """A convolution that is really upfirdn2d's FIR filter (depthwise or single-plane), as the
    reference and conv-backend paths run it; those count as filter work, not dense work."""
    shapes = [s for s in (event.input_shapes or []) if isinstance(s, (list, tuple))]
    if "backward" in event.key:
        shapes = shapes[1:]  # grad_output comes first
    if len(shapes) < 2 or len(shapes[0]) != 4 or len(shapes[1]) != 4:
        return False
    x, w = shapes[0], shapes[1]
    return w[1] == 1 and w[2] * w[3] > 1 and w[0] in (1, x[1])


def g_step_breakdown(steps: "Steps") -> dict:
    """Self CPU seconds of one profiled generator step: network convolutions and matrix products
    vs everything else (element-wise ops, resampling filters, copies)."""
    from torch.profiler import ProfilerActivity, profile

    steps.generator()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        steps.generator()
    dense = other = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = event.self_cpu_time_total / 1e6
        if any(key in event.key.lower() for key in _DENSE_OPS) and not _is_fir_filter(event):
            dense += seconds
        else:
            other += seconds
    return {"conv_matmul_s": round(dense, 4), "elementwise_and_other_s": round(other, 4)}


class Steps:
    """The three unregularised training steps, on random data of the right shape."""

    def __init__(self, G, D_image, D_joint, batch: int, style_mixing_prob: float = 0.9):
        self.G, self.D_image, self.D_joint = G, D_image, D_joint
        self.batch = batch
        self.style_mixing_prob = style_mixing_prob
        res, labels = G.resolution, G.num_labels
        self.real = torch.randn(batch, G.img_channels, res, res).clamp(-1, 1)
        self.real_mask = (torch.rand(batch, labels, res, res) > 0.5).float() * 2 - 1
        self.nets = (G, D_image, D_joint)

    def _zero(self):
        for net in self.nets:
            net.zero_grad(set_to_none=True)

    def _z(self):
        return torch.randn(self.batch, self.G.z_dim)

    def generator(self):
        self._zero()
        img, seg = self.G(self._z(), style_mixing_prob=self.style_mixing_prob)
        loss = F.softplus(-self.D_image(img)).mean()
        # The joint D must not reach the image head: it sees the detached image.
        joint = self.D_joint(img.detach(), 2 * torch.sigmoid(seg) - 1)
        loss = loss - sum(o.mean() for o in joint)
        loss.backward()

    def image_discriminator(self):
        self._zero()
        with torch.no_grad():
            img, _ = self.G(self._z())
        loss = F.softplus(self.D_image(img)).mean() + F.softplus(-self.D_image(self.real)).mean()
        loss.backward()

    def joint_discriminator(self):
        self._zero()
        with torch.no_grad():
            img, seg = self.G(self._z())
        fake = self.D_joint(img, 2 * torch.sigmoid(seg) - 1)
        real = self.D_joint(self.real, self.real_mask)
        loss = sum(F.relu(1 + o).mean() for o in fake) + sum(F.relu(1 - o).mean() for o in real)
        loss.backward()

    def generator_forward(self):
        with torch.no_grad():
            self.G(self._z(), noise_mode="const")

    def synthesis_inversion(self):
        """Synthesis forward + backward to the latents, as test-time optimisation runs it."""
        self._zero()
        if not hasattr(self, "_ws"):
            with torch.no_grad():
                self._ws = self.G.mapping(self._z())
        ws = self._ws.clone().requires_grad_(True)
        image, logits = self.G.synthesis(ws, noise_mode="const")
        (image - self.real).square().mean().backward()


def flops_per_image(cfg: dict) -> dict:
    """Forward FLOPs (convolutions and matrix products) per image, counted at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    G, D_image, D_joint = build_models(cfg)
    z = torch.randn(1, G.z_dim)
    out = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            img, seg = G(z)
        out["G_forward"] = int(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            D_image(img)
        out["D_image_forward"] = int(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            D_joint(img, seg)
        out["D_joint_forward"] = int(counter.get_total_flops())
    return out


def time_config(cfg: dict, batch: int, repeats: int, impls=IMPLS, forms: bool = True) -> dict:
    G, D_image, D_joint = build_models(cfg)
    steps = Steps(G, D_image, D_joint, batch)
    result = {
        "resolution": cfg["resolution"],
        "batch": batch,
        "repeats": repeats,
        "params": {
            "G": count_parameters(G),
            "D_image": count_parameters(D_image),
            "D_joint": count_parameters(D_joint),
        },
        "flops_per_image": flops_per_image(cfg),
        "impls": {},
    }
    for impl in impls:
        with ops_impl(impl):
            g = _median_time(steps.generator, repeats)
            di = _median_time(steps.image_discriminator, repeats)
            dj = _median_time(steps.joint_discriminator, repeats)
            ran = resolved_impl()
            breakdown = g_step_breakdown(steps)
        train_wall, train_cpu = g[0] + di[0] + dj[0], g[1] + di[1] + dj[1]
        result["impls"][impl] = {
            "ran": ran,
            "g_step_s": round(g[0], 4),
            "d_image_step_s": round(di[0], 4),
            "d_joint_step_s": round(dj[0], 4),
            "train_step_s": round(train_wall, 4),
            # one iteration consumes `batch` unlabeled images
            "s_per_kimg": round(train_wall / batch * 1000, 1),
            "g_step_profile_cpu_s": breakdown,
            "cpu_s": {
                "g_step": round(g[1], 4),
                "d_image_step": round(di[1], 4),
                "d_joint_step": round(dj[1], 4),
                "train_step": round(train_cpu, 4),
                "per_kimg": round(train_cpu / batch * 1000, 1),
            },
        }
    if "fused" in result["impls"] and "reference" in result["impls"]:
        ref, fused = result["impls"]["reference"], result["impls"]["fused"]
        result["speedup"] = round(ref["g_step_s"] / fused["g_step_s"], 3)
        result["speedup_cpu_time"] = round(ref["cpu_s"]["g_step"] / fused["cpu_s"]["g_step"], 3)
        result["speedup_train_step"] = round(ref["train_step_s"] / fused["train_step_s"], 3)
        # The generator's element-wise work alone (profiled self CPU time outside conv/matmul).
        ref_other = ref["g_step_profile_cpu_s"]["elementwise_and_other_s"]
        fused_other = fused["g_step_profile_cpu_s"]["elementwise_and_other_s"]
        result["speedup_g_elementwise"] = round(ref_other / fused_other, 3) if fused_other > 0 else None
    if forms:
        result["modconv_forms"] = compare_modconv_forms(steps, repeats, cfg["generator"]["modconv_form"])
    return result


def compare_modconv_forms(steps: Steps, repeats: int, default_form: str) -> dict:
    """G forward (no grad), G step and synthesis forward+backward to ws (inversion) with each
    modulated-conv setting, default op path.

    The settings are measured round-robin (one call of each per round) so that drifting load on a
    shared machine hits them alike. 1x1 layers (the heads) use per-sample weights in every
    setting (``ModulatedConv2d.form_for``).
    """
    forms = ("batched", "grouped", "auto")
    measures = (
        ("g_forward", steps.generator_forward),
        ("g_step", steps.generator),
        ("synthesis_inversion", steps.synthesis_inversion),
    )
    samples = {form: {key: [] for key, _ in measures} for form in forms}
    for form in forms:  # warm-up
        set_modconv_form(steps.G, form)
        for _, fn in measures:
            fn()
    for _ in range(max(1, repeats)):
        for form in forms:
            set_modconv_form(steps.G, form)
            for key, fn in measures:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                samples[form][key].append((time.perf_counter() - t0, time.process_time() - c0))
    set_modconv_form(steps.G, default_form)
    out = {}
    for form in forms:
        med = {key: [statistics.median(v[i] for v in vals) for i in (0, 1)] for key, vals in samples[form].items()}
        out[form] = {f"{key}_s": round(med[key][0], 4) for key, _ in measures}
        out[form]["cpu_s"] = {key: round(med[key][1], 4) for key, _ in measures}
    for key, _ in measures:
        for form in ("grouped", "auto"):
            # CPU time: the steadier figure on a shared machine
            out[f"{form}_over_batched_{key}_cpu"] = round(out[form]["cpu_s"][key] / out["batched"]["cpu_s"][key], 3)
    return out


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        # Other jobs on a shared machine inflate wall times; see the cpu_s figures then.
        "load_average_1_5_15min": load,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    started = time.perf_counter()
    result = {
        "benchmark": "model",
        "command": " ".join(["medsemgan", "bench", "model"] + sys.argv[3:]) if sys.argv else "",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": "unregularised steps; s_per_kimg = (G step + D_image step + D_joint step) / batch * 1000",
        "configs": {},
    }
    for name in names:
        cfg = load_model_config(name)
        large = cfg["resolution"] > 128
        batch = args.large_batch if large else args.batch
        repeats = args.large_repeats if large else args.repeats
        result["configs"][name] = time_config(cfg, batch, repeats, forms=not args.no_forms)
    first = result["configs"][names[0]] if names else {}
    result["speedup"] = first.get("speedup")
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["load_average_at_end"] = machine()["load_average_1_5_15min"]
    return result
