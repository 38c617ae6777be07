"""``medsemgan bench model``: size, FLOPs, step times and element-wise work of the networks.

For each configuration: parameter counts, forward FLOPs per image (convolutions and matrix
products, counted by ``torch.utils.flop_counter``), and the wall and CPU time of one generator
step (G forward + both discriminators + backward), one image-discriminator step and one
joint-discriminator step, with the fused op path and the reference op path measured in the same
run, plus the two modulated-convolution forms side by side. Steps are unregularised (no R1, no
path length), as in the cost figures of MISSION.md section 7.

``speedup`` (top level: the first configuration) is what issue 3 defines: reference time / fused
time for the generator's element-wise work. It is measured in two stages:

1. record: during one real generator step (``Steps.generator``, default op mode) every call the
   generator's layers make to the fused element-wise op :func:`medsemgan.ops.bias_act.bias_act`
   (input shape, dtype, memory layout, act/alpha/gain/clamp, bias present, requires grad) is
   written down by :func:`record_elementwise_calls`. Calls made by the discriminators in the same
   step are not recorded. ``bias_act`` is the only element-wise custom op; ``upfirdn2d``
   (resampling filters) is not element-wise and is not counted;
2. replay: those exact calls, forward + backward with fresh random tensors of the recorded
   shapes, once through the compiled path and once through the reference path, interleaved in
   one loop (repeat r runs both before repeat r+1), medians (``medsemgan.bench.ops``'s helper).

The whole-step ratios stay in the output under their own names: ``speedup_g_step`` (G-step wall
time), ``speedup_cpu_time`` (G-step CPU time), ``speedup_train_step`` (G + both D steps, wall)
and ``speedup_g_non_dense_profile`` (profiled self CPU time of one G step outside convolutions and
matrix products: element-wise ops, but also resampling filters, copies and glue).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medsemgan.machine import machine
from medsemgan.bench.ops import _time_interleaved
from medsemgan.models.build import build_models
from medsemgan.models.config import load_model_config
from medsemgan.models.generator import count_parameters
from medsemgan.models.layers import set_modconv_form
from medsemgan.ops.bias_act import bias_act
from medsemgan.runtime import restores_torch_threads

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
    parser.add_argument(
        "--elementwise-repeats", type=int, default=15,
        help="interleaved repeats of the replayed generator element-wise calls (median reported)",
    )
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
    return {"conv_matmul_s": round(dense, 4), "non_dense_s": round(other, 4)}


SPEEDUP_DEFINITION = (
    "reference time / fused time of the generator's element-wise work: every bias_act call "
    "(forward + backward) that one generator step of the first configuration makes, replayed "
    "with both op paths interleaved, medians summed over the calls"
)
_BIAS_ACT_SIGNATURE = inspect.signature(bias_act)
# The model modules that call bias_act through their own global name; the recorder swaps it there.
_MODEL_PACKAGE = "medsemgan.models."


@dataclass(frozen=True)
class ElementwiseCall:
    """One call of the fused element-wise op as the generator made it: enough to replay it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    channels_last: bool
    bias_dtype: torch.dtype | None  # None: no bias
    dim: int
    act: str
    alpha: float | None
    gain: float | None
    clamp: float | None
    x_requires_grad: bool
    bias_requires_grad: bool

    @classmethod
    def from_arguments(cls, args, kwargs) -> "ElementwiseCall":
        bound = _BIAS_ACT_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        x, b = a["x"], a["b"]
        channels_last = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return cls(
            shape=tuple(x.shape),
            dtype=x.dtype,
            channels_last=channels_last,
            bias_dtype=None if b is None else b.dtype,
            dim=a["dim"] % x.ndim,
            act=a["act"],
            alpha=a["alpha"],
            gain=a["gain"],
            clamp=a["clamp"],
            x_requires_grad=x.requires_grad,
            bias_requires_grad=b is not None and b.requires_grad,
        )

    def as_json(self) -> dict:
        out = {
            "shape": "x".join(map(str, self.shape)),
            "dtype": str(self.dtype).replace("torch.", ""),
            "bias": None if self.bias_dtype is None else str(self.bias_dtype).replace("torch.", ""),
        }
        if self.channels_last:
            out["channels_last"] = True
        if self.dim != 1:
            out["dim"] = self.dim
        out["act"] = self.act
        for key in ("alpha", "gain", "clamp"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 6)
        out["requires_grad"] = {"x": self.x_requires_grad, "bias": self.bias_requires_grad}
        return out


class _InsideForward:
    """Forward hooks that mark when ``module``'s own forward is running (nesting-safe)."""

    def __init__(self, module: nn.Module):
        self.depth = 0
        self._handles = (
            module.register_forward_pre_hook(self._enter),
            module.register_forward_hook(self._leave, always_call=True),
        )

    def _enter(self, *_):
        self.depth += 1

    def _leave(self, *_):
        self.depth -= 1

    def remove(self):
        for handle in self._handles:
            handle.remove()


@contextlib.contextmanager
def record_elementwise_calls(generator: nn.Module):
    """Yield a list that fills with an :class:`ElementwiseCall` per ``bias_act`` call made inside
    ``generator``'s forward while the block runs.

    The model modules call ``bias_act`` through their own global name, which is swapped for a
    recording wrapper only inside this block (and restored on any exit), so the models carry no
    hook or overhead outside the benchmark. The discriminators share ``layers.py`` with the
    generator; their calls, made outside ``generator``'s forward, are not recorded.
    """
    calls: list[ElementwiseCall] = []
    inside = _InsideForward(generator)

    def recording_bias_act(*args, **kwargs):
        if inside.depth > 0:
            calls.append(ElementwiseCall.from_arguments(args, kwargs))
        return bias_act(*args, **kwargs)

    patched = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith(_MODEL_PACKAGE) and getattr(module, "bias_act", None) is bias_act
    ]
    try:
        for module in patched:
            module.bias_act = recording_bias_act
        yield calls
    finally:
        for module in patched:
            module.bias_act = bias_act
        inside.remove()


def _replay_step(calls: list[ElementwiseCall], impl: str) -> Callable[[], None]:
    """One forward + backward of every recorded call through ``impl``, on fresh random tensors
    made once here (so the timed loop measures the op, not the random number generator)."""
    prepared = []
    for call in calls:
        layout = torch.channels_last if call.channels_last else torch.contiguous_format
        x = torch.randn(call.shape, dtype=call.dtype).to(memory_format=layout)
        x.requires_grad_(call.x_requires_grad)
        b = None
        if call.bias_dtype is not None:
            b = torch.randn(call.shape[call.dim], dtype=call.bias_dtype, requires_grad=call.bias_requires_grad)
        out_dtype = call.dtype if b is None else torch.result_type(x, b)
        dy = torch.randn_like(x, dtype=out_dtype, requires_grad=False)
        prepared.append((call, x, b, dy))

    def step():
        for call, x, b, dy in prepared:
            x.grad = None
            if b is not None:
                b.grad = None
            y = bias_act(
                x, b, dim=call.dim, act=call.act, alpha=call.alpha, gain=call.gain, clamp=call.clamp, impl=impl
            )
            if y.requires_grad:
                y.backward(dy)

    return step


def _group_calls(calls: list[ElementwiseCall]) -> list[dict]:
    counts: dict[ElementwiseCall, int] = {}
    for call in calls:
        counts[call] = counts.get(call, 0) + 1
    return [{**call.as_json(), "count": n} for call, n in counts.items()]


def time_elementwise(calls: list[ElementwiseCall], repeats: int) -> dict:
    """Median ms of the replayed calls per op path (interleaved) and their ratio."""
    from medsemgan.ops import loader

    compiled = loader.extension("cpu") is not None
    out = {
        "op": "medsemgan.ops.bias_act.bias_act",
        "calls": len(calls),
        "fused_is_compiled": compiled,
        "repeats": repeats,
    }
    if calls:
        ms = _time_interleaved({path: _replay_step(calls, path) for path in IMPLS}, max(1, repeats))
        out["fused_ms"] = round(ms["fused"], 3)
        out["reference_ms"] = round(ms["reference"], 3)
        out["speedup"] = round(ms["reference"] / ms["fused"], 3) if ms["fused"] > 0 else None
    out["signatures"] = _group_calls(calls)
    return out


def generator_elementwise(steps: "Steps", repeats: int) -> dict:
    """Record the element-wise calls of one generator step (default op mode), then replay them."""
    with ops_impl("fused"):
        with record_elementwise_calls(steps.G) as calls:
            steps.generator()
        return time_elementwise(calls, repeats)


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


def time_config(
    cfg: dict, batch: int, repeats: int, impls=IMPLS, forms: bool = True, elementwise_repeats: int = 15
) -> dict:
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
    elementwise = generator_elementwise(steps, elementwise_repeats)
    result["g_elementwise"] = elementwise
    result["speedup"] = elementwise.get("speedup")
    if "fused" in result["impls"] and "reference" in result["impls"]:
        ref, fused = result["impls"]["reference"], result["impls"]["fused"]
        # Whole-step ratios: dominated by convolutions, which both op paths run identically.
        result["speedup_g_step"] = round(ref["g_step_s"] / fused["g_step_s"], 3)
        result["speedup_cpu_time"] = round(ref["cpu_s"]["g_step"] / fused["cpu_s"]["g_step"], 3)
        result["speedup_train_step"] = round(ref["train_step_s"] / fused["train_step_s"], 3)
        # Profiled self CPU time of a G step outside conv/matmul: element-wise ops, but also
        # resampling filters, copies and glue.
        ref_other = ref["g_step_profile_cpu_s"]["non_dense_s"]
        fused_other = fused["g_step_profile_cpu_s"]["non_dense_s"]
        result["speedup_g_non_dense_profile"] = round(ref_other / fused_other, 3) if fused_other > 0 else None
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


@restores_torch_threads
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
        result["configs"][name] = time_config(
            cfg, batch, repeats, forms=not args.no_forms, elementwise_repeats=args.elementwise_repeats
        )
    first = result["configs"][names[0]] if names else {}
    result["speedup"] = first.get("speedup")
    result["speedup_definition"] = SPEEDUP_DEFINITION
    result["speedup_g_step"] = first.get("speedup_g_step")
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["load_average_at_end"] = machine()["load_average_1_5_15min"]
    return result
