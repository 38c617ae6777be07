"""What ``inference.json`` / ``evaluate.json`` build, made by the code ``medsemgan segment`` runs.

Masks from the bundle and from ``medsemgan segment`` are identical because both use the same
study discovery (``find_studies``), model loading (``segment.load_model``), options
(``SegmentOptions``: configuration defaults, seed, batch size), preprocessing
(``data.transforms.preprocess`` per modality), inferer (``TTOInferer``), inversion (``Invertd`` of
the sigmoid probability, linear interpolation) and threshold (``> 0.5``, the input's own affine).

Failing studies are handled as ``medsemgan segment`` handles them: each study is loaded inside a try
(``StudyDataset``), a study that cannot be loaded is logged and skipped (``StudyFailures.skip``),
the others are segmented, and the run ends with an ``InputError`` naming every failed study and
its problem, listed in ``failures.json`` (``StudyFailures``).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset
from monai.transforms import MapTransform

from medsemgan.errors import InputError

log = logging.getLogger(__name__)


def study_datalist(dataset_dir: str | os.PathLike, series: str | int | None = None) -> list[dict[str, str]]:
    """One item per case under ``dataset_dir`` (NIfTI/NRRD files, DICOM series folders):
    ``{"image": path, "image_path": path, "case": name}``, plus ``"series"`` (what ``LoadVolumed``
    reads) for one series of a multi-series DICOM folder: the cases and names ``medsemgan segment``
    gives (``find_cases``: ``series`` as ``--series``, else every CT/MR volume series)."""
    from medsemgan.inference.segment import find_cases

    if dataset_dir is None:
        raise InputError(None, "no --dataset_dir given (a study file or a folder of studies)")
    from medsemgan.data.datalist import bundle_items, is_dataset

    if is_dataset(dataset_dir):
        return bundle_items(dataset_dir, labeled=False)  # own data: MSD/nnU-Net folder, MONAI datalist
    # not as_optional_str: 'none' names the series without a UID here, as with --series none
    cases, skipped = find_cases(dataset_dir, None if series is None else str(series))
    for entry in skipped:
        log.info("%s: %s (skipped)", entry["input"], entry["reason"])
    if not cases:
        raise InputError(dataset_dir, "nothing to segment: " + "; ".join(e["reason"] for e in skipped))
    items = []
    for case in cases:
        item = {"image": str(case.path), "image_path": str(case.path), "case": case.name}
        if case.series is not None:
            item["series"] = case.series
        items.append(item)
    return items


class SaveProbabilityd(MapTransform):
    """With ``enabled`` (the ``save_prob`` override), write the inverted liver probability as
    ``OUT/<case><postfix>_prob.nii.gz`` (float32, the input's exact affine), as ``medsemgan
    segment --save-prob`` does. Put it before ``SaveMaskd``, which replaces the probability by the
    mask."""

    def __init__(self, keys="pred", output_dir: str | os.PathLike = "output", output_postfix: str = "",
                 enabled: bool = False, case_key: str = "case", allow_missing_keys: bool = False) -> None:
        from medsemgan.bundle.options import as_bool

        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.enabled = as_bool(enabled, "save_prob")
        self.case_key = case_key

    def __call__(self, data):
        from medsemgan.bundle.transforms import INPUT_AFFINE_KEY
        from medsemgan.inference.writers import write_probability

        d = dict(data)
        if not self.enabled:
            return d
        affine = torch.as_tensor(d[INPUT_AFFINE_KEY], dtype=torch.float64)
        for key in self.key_iterator(d):
            prob = torch.as_tensor(d[key])[:1].float().clamp(0, 1).cpu()
            d[f"{key}_prob_path"] = str(write_probability(
                prob, self.output_dir / f"{d[self.case_key]}{self.output_postfix}_prob.nii.gz", affine))
        return d


def load_network(bundle_root: str | os.PathLike, model_config: str | None = None,
                 generator: str | None = None, encoder: str | None = None,
                 device: str | torch.device | None = None) -> torch.nn.Module:
    """``SegmentationModel`` from the bundle's ``models/generator.pt`` + ``models/encoder.pt``
    (or explicit files); the same loader as ``medsemgan segment --bundle``. ``device``: None
    keeps it on the CPU; 'auto', 'cpu', 'cuda', 'cuda:N' as ``--device``."""
    from medsemgan.inference.model import resolve_device
    from medsemgan.inference.segment import load_model

    from medsemgan.bundle.options import as_optional_str
    from medsemgan.runtime import keep_freed_memory

    keep_freed_memory()  # the bundle runs outside the medsemgan command
    args = argparse.Namespace(bundle=os.fspath(bundle_root), config=as_optional_str(model_config),
                              generator=as_optional_str(generator), encoder=as_optional_str(encoder))
    model = load_model(args)
    return model if device is None else model.to(resolve_device(device))


def segment_options(steps: int | None = None, encoder_only: bool = False, batch_size: int | None = None,
                    seed: int | None = None, modality: str | None = None, **tto: Any):
    from medsemgan.inference.segment import SegmentOptions

    return SegmentOptions(steps=steps, encoder_only=bool(encoder_only), batch_size=batch_size, seed=seed,
                          modality=modality, extra_tto={k: v for k, v in tto.items() if v is not None})


def make_inferer(network, steps: int | None = None, encoder_only: bool = False,
                 batch_size: int | None = None, seed: int | None = None, progress: bool = False,
                 **tto: Any):
    """``TTOInferer`` with the options ``segment_volume`` would use for the same settings
    (``None`` = the model configuration's ``inference:`` value)."""
    from medsemgan.bundle.options import as_bool, as_optional_int
    from medsemgan.inference.inferer import TTOInferer

    steps, batch_size = as_optional_int(steps, "steps"), as_optional_int(batch_size, "batch_size")
    seed = as_optional_int(seed, "seed")
    if steps is not None and steps < 0:
        raise InputError(None, f"--steps must be >= 0, got {steps}")
    if batch_size is not None and batch_size < 1:
        raise InputError(None, f"--batch_size must be >= 1, got {batch_size}")
    options = segment_options(steps, as_bool(encoder_only, "encoder_only"), batch_size, seed, **tto)
    cfg = network.config.inference
    return TTOInferer(options.tto_options(cfg), batch_size=options.slice_batch(cfg),
                      progress=as_bool(progress, "progress"), modality_options=options.modality_tto_options(cfg))


def ood_signal(network) -> str:
    from medsemgan.inference.ood import ood_setting

    return ood_setting(network.config.inference)[0]


def ood_threshold(network) -> float:
    from medsemgan.inference.ood import ood_setting

    return ood_setting(network.config.inference)[1]


def resolution(network) -> int:
    return int(network.resolution)


def output_folder(path: str | os.PathLike) -> str:
    """Create the output folder up front (a clear error if it is a file)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "output exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# One bad study must not stop the others (as in ``medsemgan segment``): each study is loaded inside
# a try by ``StudyDataset``; a study that fails becomes a small marker item that
# ``StudyFailures.skip`` drops before the evaluator sees it, and ``StudyFailures`` (an ignite
# handler) lists the failures in ``failures.json`` and raises once every readable study is written.

FAILED_KEY = "study_failed"
FAILURES_FILE = "failures.json"


def describe_failure(err: BaseException, study_path: str | None) -> tuple[str | None, str]:
    """``(path, problem)`` of a study's failure.

    MONAI wraps an exception raised in a transform in ``RuntimeError('applying transform ...')``
    (once per nesting level): the project's ``InputError`` anywhere in that chain gives the file
    and the problem; otherwise the innermost exception is the problem, named after the study."""
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    for link in chain:
        if isinstance(link, InputError):
            return link.path or study_path, link.problem
    innermost = chain[-1]
    return study_path, f"{type(innermost).__name__}: {innermost}"


def failed_study(item: dict[str, Any], err: BaseException) -> dict[str, str]:
    """The marker item that stands for a study that could not be loaded (strings only, so it
    survives a DataLoader worker and the collate)."""
    study_path = item.get("image_path") or item.get("image")
    study_path = None if study_path is None else str(study_path)
    where, problem = describe_failure(err, study_path)
    marker = {"case": str(item.get("case", "")), "image_path": str(study_path),
              FAILED_KEY: f"{where}: {problem}" if where else problem}
    if item.get("label_path"):
        marker["label_path"] = str(item["label_path"])
    return marker


class StudyDataset(Dataset):
    """MONAI ``Dataset`` that loads each study inside a try: a study whose loading or
    preprocessing raises (unreadable or corrupt file, bad geometry, missing label...) becomes a
    marker item ``{"case", "image_path", "study_failed": "<path>: <problem>"}`` instead of ending
    the run. Use with ``batch_size=1`` and ``StudyFailures.skip``."""

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as err:  # noqa: BLE001 - one bad study must not stop the others
            log.debug("loading study %d failed", index, exc_info=True)
            return failed_study(self.data[index], err)


def _first(value: Any) -> str:
    """A collated string field (a one-element list after the DataLoader) or a plain one."""
    if isinstance(value, (list, tuple)):
        return str(value[0]) if len(value) == 1 else ", ".join(str(v) for v in value)
    return str(value)


class _ReadableStudies:
    """The data loader's batches less the failed studies (no ``len``: the evaluator learns the
    epoch length when the loader is exhausted, since failures are only known by loading)."""

    def __init__(self, data_loader, failures: StudyFailures) -> None:
        self.data_loader = data_loader
        self.failures = failures

    def __iter__(self):
        readable = 0
        for batch in self.data_loader:
            self.failures.seen += 1
            if isinstance(batch, dict) and FAILED_KEY in batch:
                self.failures.record(batch)
                continue
            readable += 1
            yield batch
        if readable == 0 and self.failures.failed:
            # Nothing to segment: stop here rather than let metrics complain about an empty epoch.
            self.failures.finish()


class StudyFailures:
    """Ignite handler and data filter for studies that could not be loaded.

    ``skip(data_loader)`` is what the evaluator iterates: the loader's batches less the marker
    items of ``StudyDataset``; each skipped study is logged as ``medsemgan segment`` logs it. At
    ``STARTED`` a ``failures.json`` left by an earlier run in ``output_dir`` is removed; at
    ``COMPLETED`` (attach this handler last, so the other handlers have written their files) any
    failures are written to ``output_dir/failures.json`` (atomically) and an ``InputError`` naming
    each failed study and its problem ends the run, so the shell sees a non-zero exit status.
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = Path(output_dir)
        self.failed: list[dict[str, str]] = []
        self.seen = 0

    @property
    def path(self) -> Path:
        return self.output_dir / FAILURES_FILE

    def skip(self, data_loader) -> _ReadableStudies:
        return _ReadableStudies(data_loader, self)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine=None) -> None:
        self.failed, self.seen = [], 0
        self.path.unlink(missing_ok=True)

    def record(self, batch: dict[str, Any]) -> None:
        entry = {"case": _first(batch.get("case", "")), "input": _first(batch.get("image_path", "")),
                 "error": _first(batch[FAILED_KEY])}
        if batch.get("label_path"):
            entry["label"] = _first(batch["label_path"])
        log.error("%s (study skipped)", entry["error"])
        self.failed.append(entry)

    def completed(self, engine=None) -> None:
        if self.failed:
            self.finish()

    def finish(self) -> None:
        from medsemgan.inference.writers import write_json

        written = write_json({"n_studies": self.seen, "n_failed": len(self.failed), "failed": self.failed},
                             self.path)
        n = len(self.failed)
        raise InputError(None, f"{n} of {self.seen} stud{'y' if self.seen == 1 else 'ies'} could not be "
                               f"segmented and {'was' if n == 1 else 'were'} skipped (listed in {written}): "
                               + "; ".join(entry["error"] for entry in self.failed))
