"""metadata.json against the offline schema; the bundle's files and versions are consistent."""

from __future__ import annotations

import configparser
import copy
import importlib.metadata as md
import json
import re

import jsonschema
import pytest
from bundle_fixtures import BUNDLE_SRC, REPO, SCHEMA

META = BUNDLE_SRC / "configs" / "metadata.json"


def _metadata() -> dict:
    return json.loads(META.read_text())


def test_verify_metadata_passes_offline(tmp_path):
    from monai.bundle import verify_metadata

    # The schema file exists, so MONAI skips the download: this runs without network.
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA))


def test_verify_metadata_rejects_missing_required_fields(tmp_path):
    from monai.bundle import verify_metadata

    schema_copy = tmp_path / "schema.json"
    schema_copy.write_text(SCHEMA.read_text())
    for field in ("version", "monai_version", "network_data_format", "authors"):
        broken = _metadata()
        del broken[field]
        path = tmp_path / f"no_{field}.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match="Failed validating"):
            verify_metadata(meta_file=str(path), filepath=str(schema_copy))


def test_schema_encodes_tensor_format_rules():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    good = _metadata()
    assert not list(validator.iter_errors(good))
    bad = copy.deepcopy(good)
    bad["network_data_format"]["inputs"]["image"]["value_range"] = [-1]  # [MIN, MAX] or []
    bad["network_data_format"]["outputs"]["pred"].pop("channel_def")
    bad["network_data_format"]["inputs"]["image"].pop("modality")
    messages = " ".join(e.message for e in validator.iter_errors(bad))
    assert "channel_def" in messages and "modality" in messages
    assert any(list(e.path)[-1:] == ["value_range"] for e in validator.iter_errors(bad))
    no_packages = copy.deepcopy(good)
    no_packages.pop("required_packages_version")
    assert list(validator.iter_errors(no_packages))


def _pins_from_setup_cfg() -> dict[str, str]:
    text = (REPO / "setup.cfg").read_text()
    block = text.split("install_requires =", 1)[1].split("\n[", 1)[0]
    pins = {}
    for line in block.splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_versions_match_the_pinned_environment():
    meta = _metadata()
    pins = _pins_from_setup_cfg()
    assert meta["monai_version"] == pins["monai"] == md.version("monai")
    assert meta["pytorch_version"] == pins["torch"] == md.version("torch").split("+")[0]
    assert meta["numpy_version"] == pins["numpy"] == md.version("numpy")
    for name, version in meta["required_packages_version"].items():
        if name == "medsemgan":
            assert version == md.version("medsemgan")
        else:
            assert pins.get(name.lower()) == version, f"{name}: metadata {version}, setup.cfg {pins.get(name.lower())}"
    assert meta["version"] in meta["changelog"]


def test_bundle_layout_and_logging_conf():
    for rel in ("LICENSE", "configs/metadata.json", "configs/inference.json", "configs/train.json",
                "configs/train_encoder.json", "configs/evaluate.json", "configs/multi_gpu_train.json",
                "configs/logging.conf", "configs/train_properties.json", "docs/README.md",
                "docs/data_license.txt"):
        assert (BUNDLE_SRC / rel).is_file(), rel
    for name in ("inference", "train", "train_encoder", "evaluate", "multi_gpu_train", "train_properties"):
        json.loads((BUNDLE_SRC / "configs" / f"{name}.json").read_text())
    parser = configparser.ConfigParser()
    parser.read(BUNDLE_SRC / "configs" / "logging.conf")
    assert parser.get("handler_consoleHandler", "class") == "StreamHandler"
    # MONAI >= 1.6 refuses logging files whose class/args could run code; ours must pass.
    from monai.bundle.workflows import _reject_executable_logging_config

    _reject_executable_logging_config(str(BUNDLE_SRC / "configs" / "logging.conf"))
