"""3-D -> 2-D: slice datasets, inference slicing, the training set and its caches."""

from __future__ import annotations

import copy
import os
import shutil

import numpy as np
import pytest
import torch

from monai.data import MetaTensor
from monai.transforms import Invertd

from medsemgan.data.btcv import BTCV_DEV_PATIENTS, BTCV_POOL_PATIENTS
from medsemgan.data import slices
from medsemgan.data.catalogue import get_study, training_studies
from medsemgan.data.slices import (
    LabeledBudget,
    all_slice_dataset,
    assemble_training_set,
    preprocess_pool,
    random_slice_dataset,
    slices_to_volume,
    spread_indices,
    training_tensors,
    volume_dataset,
    volume_to_slices,
)
from medsemgan.data.transforms import preprocess


def _synthetic_volumes(n_slices=(5, 3), size=16):
    volumes = []
    for v, z in enumerate(n_slices):
        image = torch.arange(z, dtype=torch.float32).view(1, 1, 1, z).expand(1, size, size, z).clone() + 10 * v
        label = (image % 2 == 0).float()  # label encodes the slice parity of its own image
        volumes.append({"image": MetaTensor(image), "label": MetaTensor(label)})
    return volumes


# ----------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize(
    "value, expected",
    [(None, ("all", None)), ("all", ("all", None)), (8, ("slices", 8)), ("20", ("slices", 20)),
     ("slices:5", ("slices", 5)), ("volumes:2", ("volumes", 2))],
)
def test_labeled_budget_forms(value, expected):
    budget = LabeledBudget.parse(value)
    assert (budget.kind, budget.count) == expected


@pytest.mark.parametrize("value", [0, -3, "volumes:0", "many", "slices:", True])
def test_labeled_budget_rejects_nonsense(value):
    with pytest.raises(ValueError):
        LabeledBudget.parse(value)


def test_spread_indices_is_even_and_avoids_the_ends():
    candidates = list(range(100, 200))
    picked = spread_indices(candidates, 4)
    assert picked == [112, 137, 162, 187]
    assert spread_indices(candidates, 4) == picked  # deterministic
    assert spread_indices([1, 2], 5) == [1, 2]


def test_random_slices_pair_image_and_label_of_the_same_slice():
    volumes = _synthetic_volumes()
    dataset = random_slice_dataset(volumes, samples_per_volume=6, seed=3)
    items = list(dataset)
    assert len(items) == 12
    for item in items:
        assert tuple(item["image"].shape) == (1, 16, 16)
        value = float(item["image"][0, 0, 0])
        assert torch.all(item["image"] == value)
        assert torch.all(item["label"] == float(value % 2 == 0))
    assert len({float(i["image"][0, 0, 0]) for i in items}) > 2  # actually random positions


def test_all_slices_visits_every_slice_once_in_order():
    items = list(all_slice_dataset(_synthetic_volumes()))
    values = [float(i["image"][0, 0, 0]) for i in items]
    assert values == [0, 1, 2, 3, 4, 10, 11, 12]
    assert all(tuple(i["label"].shape) == (1, 16, 16) for i in items)


def test_inference_slices_go_back_through_invertd():
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    x, y = np.meshgrid(np.arange(50), np.arange(40), indexing="ij")
    body = (((x - 25) / 20.0) ** 2 + ((y - 20) / 15.0) ** 2 <= 1)
    ct = np.repeat(np.where(body, 50.0, -1000.0)[..., None], 6, axis=-1)
    image = MetaTensor(torch.as_tensor(ct, dtype=torch.float32)[None], affine=torch.as_tensor(affine))
    image.meta["space"] = "RAS"
    pipeline = preprocess("CT", 32, keys=("image",))
    model_space = pipeline({"image": image})["image"]
    batch = volume_to_slices(model_space)
    assert tuple(batch.shape) == (6, 1, 32, 32)
    prediction = (batch > 0).float()  # a stand-in model: "liver" = body
    volume = slices_to_volume(prediction, like=model_space)
    back = Invertd(keys="pred", transform=pipeline, orig_keys="image", nearest_interp=True)(
        {"image": model_space, "pred": volume}
    )["pred"]
    assert tuple(back.shape) == (1, 50, 40, 6)
    assert np.allclose(back.affine.numpy(), affine)
    recovered = back[0, ..., 0].numpy() > 0.5
    assert 2 * (recovered & body).sum() / (recovered.sum() + body.sum()) > 0.95
    with pytest.raises(ValueError):
        slices_to_volume(prediction[:5], like=model_space)


# ----------------------------------------------------------------------------- real studies


@pytest.fixture
def dcmqi_root(shared_data, tmp_path):
    """A data root holding only the three dcmqi slices (read in place through a link)."""
    (tmp_path / "data" / "ct").mkdir(parents=True)
    (tmp_path / "data" / "ct" / "dcmqi").symlink_to(shared_data / "ct" / "dcmqi")
    return tmp_path / "data"


def test_volume_cache_keeps_metadata_and_is_reused(dcmqi_root, tmp_path, monkeypatch):
    study = get_study(dcmqi_root, "dcmqi_3slice")
    first = volume_dataset([study], 32, cache_dir=tmp_path / "cache")[0]
    cached = list((tmp_path / "cache" / "volumes").glob("*.pt"))
    assert len(cached) == 1
    monkeypatch.setattr(slices, "get_study", lambda *a: pytest.fail("recomputed instead of using the cache"))
    again = volume_dataset([study], 32, cache_dir=tmp_path / "cache")[0]
    assert isinstance(again["image"], MetaTensor)
    assert torch.equal(again["image"].as_tensor(), first["image"].as_tensor())
    assert torch.allclose(again["image"].affine, first["image"].affine)
    assert len(again["image"].applied_operations) == len(first["image"].applied_operations) > 0
    # the cached record still inverts, through a freshly built pipeline
    monkeypatch.undo()
    original = study.load()["label"]
    back = Invertd(keys="label", transform=preprocess("CT", 32), orig_keys="image", nearest_interp=False)(
        {"image": again["image"], "label": again["label"]}
    )["label"]
    assert tuple(back.shape) == tuple(original.shape)
    assert np.allclose(back.affine.numpy(), original.affine.numpy())
    overlap = ((back[0] > 0.5) & (original[0] > 0)).sum() * 2 / ((back[0] > 0.5).sum() + (original[0] > 0).sum())
    assert float(overlap) > 0.9  # 3 slices at 32 px: coarse, but on the right voxels


def test_training_tensors_cache_on_disk(dcmqi_root, tmp_path, monkeypatch):
    # a fixed code fingerprint: the source files may change while the test runs (shared checkout)
    monkeypatch.setattr(slices, "code_fingerprint", lambda parts: "code A")
    out = training_tensors(dcmqi_root, 32, "all", cache_dir=tmp_path / "cache")
    assert set(out) == {"unlabeled", "labeled_image", "labeled_mask"}
    assert tuple(out["unlabeled"].shape) == (3, 1, 32, 32)
    assert tuple(out["labeled_mask"].shape) == (3, 1, 32, 32)
    assert len(list((tmp_path / "cache").glob("training_tensors_32_*.pt"))) == 1
    monkeypatch.setattr(slices, "build_training_set", lambda *a: pytest.fail("cache not used"))
    again = training_tensors(dcmqi_root, 32, "all", cache_dir=tmp_path / "cache")
    assert all(torch.equal(out[k], again[k]) for k in out)
    with pytest.raises(pytest.fail.Exception):  # other settings, other cache entry
        training_tensors(dcmqi_root, 32, 2, cache_dir=tmp_path / "cache")
    # other code computing the tensors: another cache entry (issue 18)
    monkeypatch.setattr(slices, "code_fingerprint", lambda parts: "code B")
    with pytest.raises(pytest.fail.Exception):
        training_tensors(dcmqi_root, 32, "all", cache_dir=tmp_path / "cache")


def test_training_tensors_cache_follows_the_studies_bytes(shared_data, tmp_path, monkeypatch):
    """Touching a study keeps the cache; rewriting one of its files with other bytes does not."""
    monkeypatch.setattr(slices, "code_fingerprint", lambda parts: "code A")
    root = tmp_path / "data"
    shutil.copytree(shared_data / "ct" / "dcmqi", root / "ct" / "dcmqi")
    for path in (root / "ct" / "dcmqi").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    training_tensors(root, 32, "all", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(slices, "build_training_set", lambda *a: pytest.fail("cache not used"))
    label = root / "ct" / "dcmqi" / "liver_seg.nrrd"
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    training_tensors(root, 32, "all", cache_dir=tmp_path / "cache")
    slice_file = sorted((root / "ct" / "dcmqi" / "ct-3slice").iterdir())[0]
    data = bytearray(slice_file.read_bytes())
    data[-1] ^= 0x01  # one pixel's lowest bit
    slice_file.write_bytes(bytes(data))
    with pytest.raises(pytest.fail.Exception):
        training_tensors(root, 32, "all", cache_dir=tmp_path / "cache")


@pytest.fixture(scope="module")
def pool(shared_data, study_cache):
    loaded = lambda study: copy.deepcopy(study_cache(study.name))  # noqa: E731
    return preprocess_pool(training_studies(shared_data), 64, load=loaded)


def test_protocol_training_pool(pool):
    full = assemble_training_set(pool, "all")
    summary = full.summary()
    per_study = summary["unlabeled_per_study"]
    assert {k: v for k, v in per_study.items() if not k.startswith("btcv_")} == {
        "ircadb_1": 129, "totalseg_ct": 112, "totalseg_ct_dicom": 20, "dcmqi_3slice": 3}
    # the 15 BTCV pool patients join with their body slices (the README's depth minus padding and
    # slices without body); the 5 dev patients never do
    assert {k for k in per_study if k.startswith("btcv_")} == {f"btcv_{i}" for i in BTCV_POOL_PATIENTS}
    assert per_study["btcv_1"] == 139 and per_study["btcv_28"] == 90
    assert sum(per_study.values()) == 2178
    assert summary["labeled_studies"] == ["ircadb_1"]
    assert summary["labeled_slices"] == 129 and summary["labeled_with_liver"] == 98
    names = {name for name, _ in full.unlabeled_origin + full.labeled_origin}
    assert not any(n.startswith(("chaos", "totalseg_mr")) for n in names)  # test data never trains
    assert not names & {f"btcv_{i}" for i in BTCV_DEV_PATIENTS}
    assert full.unlabeled.dtype == torch.float32 and full.unlabeled.min() >= -1 and full.unlabeled.max() <= 1
    assert set(torch.unique(full.labeled_mask).tolist()) == {0.0, 1.0}
    # a labeled image is the very slice the unlabeled pool holds for the same origin
    k = full.labeled_origin[60]
    assert torch.equal(full.labeled_image[60], full.unlabeled[full.unlabeled_origin.index(k)])


def test_labeled_slice_budget_spreads_over_liver_slices(pool):
    few = assemble_training_set(pool, 8)
    assert few.labeled_image.shape[0] == 8
    assert bool((few.labeled_mask.flatten(1).amax(1) == 1).all())  # every chosen slice shows liver
    z = [k for _, k in few.labeled_origin]
    assert z == sorted(z) and min(np.diff(z)) >= 10  # spread out over the 98 liver slices
    assert assemble_training_set(pool, 8).labeled_origin == few.labeled_origin


def test_labeled_volume_budget_follows_protocol_order(pool):
    two = assemble_training_set(pool, "volumes:2")
    assert sorted({n for n, _ in two.labeled_origin}) == ["ircadb_1", "totalseg_ct_dicom"]
    assert two.labeled_image.shape[0] == 129 + 20
