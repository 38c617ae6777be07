"""The out-of-domain warning: which per-slice signal a study is judged by, and the verdict.

Two signals are measured for every slice (``medsemgan.inference.tto.TTOResult``):

- ``structure``: the LNCC loss (1 - squared local normalised cross-correlation, 3 scales) between
  the slice and the generator's image at the **encoder's** w+, before any optimisation. It is
  blind to contrast and its sign, so it asks "can this generator draw this anatomy?" rather than
  "these grey values?", and it does not depend on the test-time objective or on K, so encoder-only
  and optimised runs share one threshold.
- ``mse``: the reconstruction MSE at the returned w+ (after optimisation when K > 0). It mixes
  contrast with structure and falls as the optimisation fits the slice, so with an objective that
  ignores grey values (the MR path's LNCC) it no longer measures fit at all.

The model configuration's ``inference`` section chooses: ``ood_signal`` (``structure`` or ``mse``)
and ``ood_threshold`` (the per-study mean above which the study is flagged). An older
configuration with only ``ood_mse_threshold`` keeps its meaning (signal ``mse``).
:func:`suggest_threshold` proposes a threshold from measured in-domain and out-of-domain studies
(``medsemgan report`` calls it per signal).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

OOD_SIGNALS = ("structure", "mse")
DEFAULT_OOD_SIGNAL = "structure"
# Per signal, used when the configuration gives no threshold; calibrated for the shipped cpu128
# weights (docs/inference.md, "Out-of-domain warning").
DEFAULT_OOD_THRESHOLDS = {"structure": 0.785, "mse": 0.05}
# Per-slice extras of TTOInferer.last_extras, per signal.
SIGNAL_EXTRAS = {"structure": "structure_error", "mse": "recon_mse"}


def ood_setting(inference_cfg: Mapping[str, Any]) -> tuple[str, float]:
    """``(signal, threshold)`` from a model configuration's ``inference`` section."""
    if "ood_signal" not in inference_cfg and "ood_mse_threshold" in inference_cfg:
        return "mse", float(inference_cfg["ood_mse_threshold"])
    signal = str(inference_cfg.get("ood_signal", DEFAULT_OOD_SIGNAL))
    if signal not in OOD_SIGNALS:
        raise ValueError(f"inference.ood_signal must be one of {OOD_SIGNALS}, got {signal!r}")
    threshold = inference_cfg.get("ood_threshold")
    return signal, float(DEFAULT_OOD_THRESHOLDS[signal] if threshold is None else threshold)


def ood_verdict(per_slice: Mapping[str, torch.Tensor], signal: str, threshold: float) -> dict[str, Any]:
    """The study-level record: ``ood_signal``, ``ood_score`` (mean of the signal's per-slice
    values), ``ood_threshold`` and ``out_of_domain`` (score above the threshold)."""
    values = per_slice[SIGNAL_EXTRAS[signal]]
    score = float(values.float().mean())
    return {"ood_signal": signal, "ood_score": score, "ood_threshold": float(threshold),
            "out_of_domain": bool(score > threshold)}


def signal_record(per_slice: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Both signals for a study's JSON: the per-slice values (6 decimals) and their mean, for
    every signal present in ``per_slice`` (``recon_mse``, ``structure_error``)."""
    record: dict[str, Any] = {}
    for name in SIGNAL_EXTRAS.values():
        if name in per_slice:
            values = per_slice[name]
            record[name] = [round(float(v), 6) for v in values]
            record[f"mean_{name}"] = float(values.float().mean())
    return record


def ood_message(where: Any, verdict: Mapping[str, Any]) -> str:
    what = {"structure": "structural error of the encoder's reconstruction",
            "mse": "reconstruction MSE"}[verdict["ood_signal"]]
    return (f"{where}: the generator explains this study poorly (mean {what} {verdict['ood_score']:.4f} "
            f"> {verdict['ood_threshold']:.4f}): treat the mask as out-of-domain")


def suggest_threshold(in_domain: list[float], out_of_domain: list[float]) -> dict:
    """A threshold for one out-of-domain signal from measured cases: the midpoint between the largest
    in-domain (CT) and the smallest out-of-domain (MRI) value when every CT case lies below every
    MRI case (``separates`` True); ``separates`` False and no threshold when they overlap (with
    how many cases lie on the wrong side of the other set's extreme); None when a side is empty.

    When they overlap, ``ct_safe_threshold`` is the midpoint between the largest CT value and the
    next MRI value above it (None when no MRI case lies above every CT case), and
    ``out_of_domain_flagged`` how many MRI cases it still flags: a warning that fires on in-domain
    CT teaches users to ignore it, so a threshold that misses some MRI is the lesser harm."""
    ins = [float(v) for v in in_domain if v is not None and math.isfinite(v)]
    outs = [float(v) for v in out_of_domain if v is not None and math.isfinite(v)]
    result = {"in_domain_n": len(ins), "out_of_domain_n": len(outs),
              "in_domain_max": max(ins) if ins else None, "out_of_domain_min": min(outs) if outs else None,
              "separates": None, "threshold": None, "in_domain_above": None, "out_of_domain_below": None,
              "ct_safe_threshold": None, "out_of_domain_flagged": None}
    if ins and outs:
        high, low = result["in_domain_max"], result["out_of_domain_min"]
        result["separates"] = high < low
        if result["separates"]:
            result["threshold"] = (high + low) / 2
        else:
            result["in_domain_above"] = sum(v >= low for v in ins)
            result["out_of_domain_below"] = sum(v <= high for v in outs)
            above = sorted(v for v in outs if v > high)
            if above:
                result["ct_safe_threshold"] = (high + above[0]) / 2
                result["out_of_domain_flagged"] = len(above)
    return result
