"""The report's configuration: test sets, label budgets and methods, with every path resolved.

``parse_config(raw)`` checks a mapping (``medsemgan/configs/report.yaml``, see docs/report.md) and
returns a :class:`ReportConfig`. Relative test-set paths resolve against ``data_root`` (default
``medsemgan.paths.data_root()``), relative weight paths against ``weights_root`` (default the
repository root). Errors name the file and the problem.
"""

from __future__ import annotations

import copy
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from medsemgan.config_files import read_yaml_mapping
from medsemgan.errors import InputError
from medsemgan.modality import MODALITIES, modality_name
from medsemgan.paths import CONFIG_DIR, REPO_DIR

DEFAULT_CONFIG = CONFIG_DIR / "report.yaml"
KINDS = ("semanticgan", "unet", "masks")
# Optional per-modality encoders of a SemanticGAN method's weights, key -> modality.
SEMANTICGAN_MODALITY_ENCODERS = {"encoder_ct": "CT", "encoder_mr": "MR"}


@dataclass
class TestSet:
    key: str
    title: str
    modality: str
    cases: list  # list[medsemgan.data.catalogue.Study]


@dataclass
class Budget:
    key: str
    title: str


@dataclass
class Method:
    key: str
    name: str
    kind: str
    options: dict
    weights: dict  # budget key -> path or {generator, encoder, [encoder_mr,] config} (already resolved)


@dataclass
class ReportConfig:
    test_sets: list[TestSet]
    budgets: list[Budget]
    methods: list[Method]
    out: Path
    device: str = "auto"
    overlays: bool = True
    data_root: Path | None = None
    weights_root: Path = REPO_DIR
    source: str = "<dict>"
    raw: dict = field(default_factory=dict)


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text)) or "x"


def _resolve(path: str | os.PathLike, root: Path | None, what: str, source: str) -> Path:
    path = Path(os.path.expanduser(str(path)))
    if path.is_absolute():
        return path
    if root is None:
        raise InputError(source, f"{what} {path} is relative but no root is known to resolve it "
                                 "(set data_root / weights_root, or $MEDSEMGAN_DATA)")
    return root / path


def _study(entry: dict, modality: str, data_root: Path | None, source: str):
    from medsemgan.data.catalogue import TEST, Study

    for key in ("name", "image"):
        if key not in entry:
            raise InputError(source, f"a test case needs '{key}': {entry}")
    label = entry.get("label")
    return Study(
        name=str(entry["name"]), source="report", modality=str(entry.get("modality", modality)).upper(),
        liver_value=int(entry.get("liver_value", 1)), split=TEST,
        image_path=_resolve(entry["image"], data_root, "image", source),
        label_path=None if label is None else _resolve(label, data_root, "label", source),
        label_kind=str(entry.get("label_kind", "volume")), root=data_root,
    )


def _test_set(raw: dict, data_root: Path | None, source: str) -> TestSet:
    from medsemgan.data.catalogue import get_study

    for key in ("key", "modality"):
        if key not in raw:
            raise InputError(source, f"every test set needs '{key}': {raw}")
    modality = modality_name(raw["modality"])
    if modality not in MODALITIES:
        raise InputError(source, f"test set {raw['key']}: modality must be CT or MR, got {raw['modality']!r}")
    cases = []
    if raw.get("studies"):
        if data_root is None:
            raise InputError(source, f"test set {raw['key']} names catalogue studies but no data folder was "
                                     "found (set data_root or $MEDSEMGAN_DATA, or list the cases explicitly)")
        cases += [get_study(data_root, name) for name in raw["studies"]]
    for entry in raw.get("cases") or []:
        cases.append(_study(entry, modality, data_root, source))
    if raw.get("datalist"):  # own data (medsemgan.data.datalist): its labeled test cases of this modality
        from medsemgan.data.datalist import read_dataset

        dataset = read_dataset(_resolve(raw["datalist"], data_root, "datalist", source), raw.get("label"))
        cases += [s for s in dataset.test_cases() if s.modality == modality]
    pattern = raw.get("pattern")
    if pattern:
        images = sorted(glob.glob(str(_resolve(pattern["images"], data_root, "pattern", source))))
        if not images:
            raise InputError(source, f"test set {raw['key']}: no file matches {pattern['images']}")
        old, new = pattern.get("label_from_image", ["image", "label"])
        for image in images:
            stem = Path(image).name.split(".")[0]
            name = stem.replace(old, "", 1).strip("_-") if old and old in stem else stem
            label = str(Path(image).parent / Path(image).name.replace(old, new, 1))
            cases.append(_study({"name": name, "image": image, "label": label,
                                 "liver_value": pattern.get("liver_value", 1)}, modality, data_root, source))
    if not cases:
        raise InputError(source, f"test set {raw['key']} has no cases (give studies:, cases:, pattern: or datalist:)")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise InputError(source, f"test set {raw['key']}: case names must be unique, got {names}")
    return TestSet(str(raw["key"]), str(raw.get("title", raw["key"])), modality, cases)


def _method(raw: dict, budgets: list[Budget], weights_root: Path, source: str) -> Method:
    for key in ("key", "kind"):
        if key not in raw:
            raise InputError(source, f"every method needs '{key}': {raw}")
    kind = str(raw["kind"])
    if kind not in KINDS:
        raise InputError(source, f"method {raw['key']}: kind must be one of {KINDS}, got {kind!r}")
    weights_raw = raw.get("weights") or {}
    if not isinstance(weights_raw, dict):
        raise InputError(source, f"method {raw['key']}: weights must map a budget key to files")
    unknown = sorted(set(map(str, weights_raw)) - {b.key for b in budgets})
    if unknown:
        raise InputError(source, f"method {raw['key']}: weights for unknown budgets {unknown}")
    weights: dict[str, Any] = {}
    for budget_key, value in weights_raw.items():
        if value is None:
            continue
        if kind == "semanticgan":
            if not isinstance(value, dict) or not {"generator", "encoder"} <= set(value):
                raise InputError(source, f"method {raw['key']} budget {budget_key}: give generator: and encoder:")
            extra_keys = sorted(set(value) - {"generator", "encoder", "config", *SEMANTICGAN_MODALITY_ENCODERS})
            if extra_keys:
                raise InputError(source, f"method {raw['key']} budget {budget_key}: unknown weight keys {extra_keys} "
                                         f"(generator, encoder, config, {', '.join(SEMANTICGAN_MODALITY_ENCODERS)})")
            weights[str(budget_key)] = {
                "generator": _resolve(value["generator"], weights_root, "weights", source),
                "encoder": _resolve(value["encoder"], weights_root, "weights", source),
                "config": value.get("config"),
                # per-modality encoders (SegmentationModel.encoder_for): encoder_mr -> MR studies
                **{key: _resolve(value[key], weights_root, "weights", source)
                   for key in SEMANTICGAN_MODALITY_ENCODERS if value.get(key)},
            }
        else:
            weights[str(budget_key)] = _resolve(value, weights_root, "weights", source)
    return Method(str(raw["key"]), str(raw.get("name", raw["key"])), kind, dict(raw.get("options") or {}), weights)


POSTPROCESSED = "postprocessed"  # kind of the derived rows: another method's masks, cleaned up


def postprocessed_methods(methods: list[Method], modes: list, source: str) -> list[Method]:
    """One derived row per method and post-processing mode (``postprocess:`` in the YAML): the
    method's own predictions, cleaned by ``medsemgan.inference.postprocess``, so every method is
    reported with and without the same clean-up and nothing is segmented twice."""
    from medsemgan.inference.postprocess import check_mode

    derived = []
    for mode in modes:
        try:
            mode = check_mode(mode)
        except ValueError as err:
            raise InputError(source, f"postprocess: {err}") from None
        if mode == "none":
            continue
        derived += [Method(f"{m.key}+{mode}", f"{m.name} + {mode.replace('_', ' + ')}", POSTPROCESSED,
                           {"source": m.key, "mode": mode}, dict(m.weights)) for m in methods]
    return derived


def parse_config(raw: dict, source: str = "<dict>", out: str | os.PathLike | None = None) -> ReportConfig:
    from medsemgan.paths import data_root as default_data_root

    raw = copy.deepcopy(raw or {})
    known = {"data_root", "weights_root", "out", "device", "overlays", "test_sets", "budgets", "methods",
             "postprocess"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(source, f"unknown keys {unknown}; known: {sorted(known)}")
    data_root = Path(raw["data_root"]).expanduser() if raw.get("data_root") else default_data_root()
    weights_root = Path(raw["weights_root"]).expanduser() if raw.get("weights_root") else REPO_DIR
    budgets = [Budget(str(b["key"]), str(b.get("title", b["key"]))) if isinstance(b, dict)
               else Budget(str(b), str(b)) for b in raw.get("budgets") or []]
    if not budgets:
        raise InputError(source, "budgets: needs at least one label budget (e.g. - key: all)")
    if len({b.key for b in budgets}) != len(budgets):
        raise InputError(source, "budget keys must be unique")
    methods = [_method(m, budgets, weights_root, source) for m in raw.get("methods") or []]
    if not methods:
        raise InputError(source, "methods: needs at least one method")
    if len({m.key for m in methods}) != len(methods):
        raise InputError(source, "method keys must be unique")
    methods += postprocessed_methods(methods, raw.get("postprocess") or [], source)
    test_sets = [_test_set(t, data_root, source) for t in raw.get("test_sets") or []]
    if not test_sets:
        raise InputError(source, "test_sets: needs at least one test set")
    if len({t.key for t in test_sets}) != len(test_sets):
        raise InputError(source, "test set keys must be unique")
    out_dir = Path(out) if out is not None else Path(raw.get("out") or "runs/report")
    return ReportConfig(test_sets, budgets, methods, out_dir, str(raw.get("device", "auto")),
                        bool(raw.get("overlays", True)), data_root, weights_root, source, raw)


def read_report_yaml(path: str | os.PathLike) -> dict:
    """The report configuration file's mapping, unchecked (``parse_config`` checks it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such report configuration")
    return read_yaml_mapping(path, "expected a mapping (test_sets:, budgets:, methods:)")


def load_report_config(path: str | os.PathLike = DEFAULT_CONFIG, out: str | os.PathLike | None = None) -> ReportConfig:
    return parse_config(read_report_yaml(path), str(Path(path)), out)
