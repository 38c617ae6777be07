"""Figures of the cross-modality report, drawn with Pillow (no plotting library needed).

* :func:`dice_bars`: per-patient Dice, one group of bars per case, one bar per method/budget.
* :func:`overlay_panel`: one slice with the ground-truth contour (green) and the predicted contour
  (red), captioned; :func:`overlay_strip` puts best / median / worst side by side.

Slices are shown in the toolkit's canonical orientation (``medsemgan.data.transforms``: anterior
up, the patient's right on the image's left), so CT and MRI panels look alike.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from medsemgan.evaluation.report_config import ReportConfig, slug
from medsemgan.inference.overlay import paint_contours
from medsemgan.io_utils import atomic_path

log = logging.getLogger(__name__)

GT_RGB = (40, 220, 60)
PRED_RGB = (240, 40, 40)
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GRID = (215, 215, 215)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


# --- per-patient Dice bars --------------------------------------------------------------------


def dice_bars(
    cases: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    title: str,
    bar_width: int = 14,
) -> Image.Image:
    """Grouped bar chart of Dice in [0, 1]. ``series``: ``(legend label, value per case)``;
    ``None`` or NaN (not run / failed) leaves a gap marked with a small 'x'."""
    font, small = _font(13), _font(11)
    n_series = max(1, len(series))
    group = n_series * bar_width + 18
    left, right, top, bottom = 56, 20, 40, 90
    plot_w = max(group * max(1, len(cases)), 240)
    plot_h = 260
    legend_rows = len(series)
    height = top + plot_h + bottom + 16 * legend_rows
    width = left + plot_w + right
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((left, 10), title, fill=INK, font=font)
    y0 = top + plot_h
    for tick in np.linspace(0, 1, 6):
        y = y0 - tick * plot_h
        draw.line([(left, y), (left + plot_w, y)], fill=GRID)
        label = f"{tick:.1f}"
        draw.text((left - 8 - _text_width(draw, label, small), y - 7), label, fill=INK, font=small)
    draw.line([(left, top), (left, y0)], fill=INK)
    draw.line([(left, y0), (left + plot_w, y0)], fill=INK)
    draw.text((8, top - 22), "Dice", fill=INK, font=small)
    for c, case in enumerate(cases):
        gx = left + c * group + 9
        for s, (_, values) in enumerate(series):
            value = values[c] if c < len(values) else None
            x = gx + s * bar_width
            if value is None or not np.isfinite(value):
                draw.line([(x + 3, y0 - 8), (x + bar_width - 4, y0 - 2)], fill=INK)
                draw.line([(x + 3, y0 - 2), (x + bar_width - 4, y0 - 8)], fill=INK)
                continue
            h = float(np.clip(value, 0, 1)) * plot_h
            draw.rectangle([x, y0 - h, x + bar_width - 2, y0], fill=PALETTE[s % len(PALETTE)])
        # case labels, rotated so long names fit under narrow groups
        label = Image.new("RGBA", (_text_width(draw, case, small) + 4, 14), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((0, 0), case, fill=INK, font=small)
        label = label.rotate(45, expand=True)
        image.paste(label, (int(gx + group / 2 - label.width + 4), y0 + 4), label)
    ly = top + plot_h + bottom - 10
    for s, (name, _) in enumerate(series):
        y = ly + 16 * s
        draw.rectangle([left, y + 2, left + 10, y + 12], fill=PALETTE[s % len(PALETTE)])
        draw.text((left + 16, y), name, fill=INK, font=small)
    return image


# --- overlays ---------------------------------------------------------------------------------


def overlay_panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, caption: str,
                  scale: int = 2) -> Image.Image:
    """``image`` 2-D in [-1, 1] (rows = anterior -> posterior), ``gt``/``pred`` binary, same shape."""
    grey = np.clip((np.asarray(image, dtype=np.float32) + 1) / 2, 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    if scale > 1:
        rgb = rgb.repeat(scale, 0).repeat(scale, 1)
        gt = np.asarray(gt).repeat(scale, 0).repeat(scale, 1)
        pred = np.asarray(pred).repeat(scale, 0).repeat(scale, 1)
    # prediction first, ground truth on top: where both agree the green line shows (the one
    # contour drawing of segment --preview, the demo and this report: medsemgan.inference.overlay)
    paint_contours(rgb, [(pred, PRED_RGB), (gt, GT_RGB)])
    panel = Image.fromarray(rgb)
    font = _font(12)
    out = Image.new("RGB", (panel.width, panel.height + 20), BACKGROUND)
    out.paste(panel, (0, 20))
    ImageDraw.Draw(out).text((4, 3), caption, fill=INK, font=font)
    return out


def overlay_strip(panels: Sequence[Image.Image], title: str) -> Image.Image:
    """Panels side by side under a title line with the colour key."""
    font = _font(13)
    gap = 8
    width = sum(p.width for p in panels) + gap * (len(panels) + 1)
    height = max((p.height for p in panels), default=20) + 46
    out = Image.new("RGB", (max(width, 420), height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    draw.text((gap, 6), title, fill=INK, font=font)
    draw.text((gap, 24), "ground truth", fill=GT_RGB, font=font)
    draw.text((gap + 100, 24), "prediction", fill=PRED_RGB, font=font)
    x = gap
    for panel in panels:
        out.paste(panel, (x, 44))
        x += panel.width + gap
    return out


# ------------------------------------------------------------- the report's figures

OVERLAY_RESOLUTION = 192


def _display_slices(study, pred_path: Path, loaded: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image / ground truth / prediction of the slice with the most liver, in canonical
    orientation (``preprocess`` at ``OVERLAY_RESOLUTION``: window, body crop, resize)."""
    import nibabel as nib
    from monai.data import MetaTensor

    from medsemgan.data.transforms import preprocess

    loaded = loaded or study.load()
    image, label = loaded["image"], loaded["label"]
    pred = np.asarray(nib.load(str(pred_path)).dataobj).astype(np.float32)
    pred_t = MetaTensor(torch.from_numpy(pred)[None], affine=image.affine.clone())
    label_t = MetaTensor(label.as_tensor().float(), affine=image.affine.clone())
    data = preprocess(study.modality, OVERLAY_RESOLUTION, keys=("image", "label", "pred"))(
        {"image": image, "label": label_t, "pred": pred_t})
    img, gt, pr = (np.asarray(data[k][0]) for k in ("image", "label", "pred"))
    area = gt.reshape(-1, gt.shape[-1]).sum(0)
    if not area.any():
        area = pr.reshape(-1, pr.shape[-1]).sum(0)
    k = int(np.argmax(area))
    return img[..., k], gt[..., k] > 0.5, pr[..., k] > 0.5



def pick_cases(rows: list[dict]) -> list[tuple[str, dict]]:
    """Best, median and worst by Dice (fewer when there are fewer distinct cases)."""
    ok = sorted((r for r in rows if r["status"] == "ok" and np.isfinite(r["dice"])), key=lambda r: -r["dice"])
    if not ok:
        return []
    picks = [("best", ok[0]), ("median", ok[(len(ok) - 1) // 2]), ("worst", ok[-1])]
    seen, out = set(), []
    for tag, row in picks:
        if row["case"] not in seen:
            seen.add(row["case"])
            out.append((tag, row))
    return out



def make_figures(config: ReportConfig, rows: list[dict], out: Path, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    figures: dict = {"bars": {}, "overlays": {}}
    for ts in config.test_sets:
        series = []
        for m in config.methods:
            for b in config.budgets:
                mine = {r["case"]: r for r in rows
                        if (r["method"], r["budget"], r["test_set"]) == (m.key, b.key, ts.key)}
                if not mine:
                    continue
                values = [mine[c.name]["dice"] if c.name in mine and mine[c.name]["status"] == "ok" else None
                          for c in ts.cases]
                series.append((f"{m.name} ({b.title})", values))
        if not series:
            continue
        path = save_png(dice_bars([c.name for c in ts.cases], series, f"Liver Dice per case: {ts.title}"),
                        out / "figures" / f"dice_{slug(ts.key)}.png")
        figures["bars"][ts.key] = str(path.relative_to(out))
    if not config.overlays:
        return figures
    wanted = []
    for ts in config.test_sets:
        for m in config.methods:
            for b in config.budgets:
                mine = [r for r in rows if (r["method"], r["budget"], r["test_set"]) == (m.key, b.key, ts.key)]
                picks = pick_cases(mine)
                if picks:
                    wanted.append((ts, m, b, picks))
    studies = {(ts.key, c.name): c for ts in config.test_sets for c in ts.cases}
    loaded_cache: dict = {}
    for ts, m, b, picks in tqdm(wanted, desc="overlays", unit="fig", disable=not progress or not wanted):
        panels = []
        for tag, row in picks:
            study = studies[(ts.key, row["case"])]
            try:
                key = (ts.key, study.name)
                if key not in loaded_cache:
                    loaded_cache.clear()  # keep one case in memory
                    loaded_cache[key] = study.load()
                img, gt, pr = _display_slices(study, Path(row["prediction"]), loaded_cache[key])
                panels.append(overlay_panel(img, gt, pr, f"{tag}: {study.name}  Dice {row['dice']:.3f}"))
            except Exception as err:  # noqa: BLE001 - a figure must not stop the report
                log.warning("overlay %s/%s/%s failed: %s", m.key, b.key, study.name, err)
        if panels:
            path = save_png(overlay_strip(panels, f"{m.name}, {b.title}, {ts.title}"),
                            out / "figures" / f"overlay_{slug(ts.key)}_{slug(m.key)}_{slug(b.key)}.png")
            figures["overlays"][(ts.key, m.key, b.key)] = str(path.relative_to(out))
    return figures
