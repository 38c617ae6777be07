"""`medsemgan export`: trained weights into a bundle's models/, cast, checked, with provenance."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))

from helpers import tiny_config  # noqa: E402

from medsemgan.bundle.export import AVERAGED_RECORD, PROVENANCE_NAME, export_encoder, export_generator  # noqa: E402
from medsemgan.cli import main  # noqa: E402
from medsemgan.errors import InputError  # noqa: E402
from medsemgan.models.build import build_generator  # noqa: E402
from medsemgan.training.checkpoint import load_checkpoint  # noqa: E402
from medsemgan.training.encoder import train_encoder  # noqa: E402
from medsemgan.training.run import train_gan  # noqa: E402
from medsemgan.training.synthetic import synthetic_tensors  # noqa: E402

ENCODER = {"channels": [8, 16, 16], "fpn_channels": 8, "head_channels": 8,
           "train": {"kimg": 0.012, "batch_size": 4, "labeled_batch_size": 2, "synthetic_batch_size": 2,
                     "warmup_kimg": 0.004, "lr": 1e-3, "checkpoint_kimg": 0.004, "progress": False,
                     "tensorboard": False}}


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    torch.set_num_threads(1)
    config = tiny_config({"kimg": 0.012}, model={"resolution": 32})  # the encoder needs >= 32 px
    out = tmp_path_factory.mktemp("gan") / "run"
    train_gan(config, out)
    return config, out


def _encoder_run(config, generator: Path, out: Path, **train) -> Path:
    encoder = {**ENCODER, "train": {**ENCODER["train"], **train}}
    encoder_config = {"model": config["model"], "data": config["data"], "encoder": encoder}
    train_encoder(encoder_config, out, generator=generator, tensors=synthetic_tensors(32, 8, 3, seed=0))
    return out


def test_generator_export_is_cast_checked_and_recorded(gan_run, tmp_path):
    config, run = gan_run
    models = tmp_path / "bundle" / "models"
    out = export_generator(run, models, dtype="fp16")
    state = torch.load(out, weights_only=True)
    assert out.name == "generator.pt"
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    ema = load_checkpoint(run / "checkpoint.pt")["G_ema"]
    G = build_generator(config["model"])
    G.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    assert all(torch.allclose(G.state_dict()[k].float(), ema[k].float(), rtol=1e-3, atol=1e-3) for k in ema)

    record = json.loads((models / PROVENANCE_NAME).read_text())["generator.pt"]
    assert record["images_seen"] == load_checkpoint(run / "checkpoint.pt")["images_seen"] > 0
    assert record["dtype"] == "fp16" and len(record["sha256"]) == 64
    check = record["cast_check"]
    assert 0 < check["image_max_abs_diff"] < 0.05 and check["mask_pixels_differing"] <= 1e-3


def test_budget_names_the_report_files(gan_run, tmp_path):
    _, run = gan_run
    out = export_generator(run, tmp_path / "models", dtype="fp16", budget="8")
    assert out.name == "generator_8.pt"
    assert "generator_8.pt" in json.loads((tmp_path / "models" / PROVENANCE_NAME).read_text())


def test_a_lossy_cast_is_refused_and_nothing_written(gan_run, tmp_path):
    _, run = gan_run
    with pytest.raises(InputError, match="--dtype"):
        export_generator(run, tmp_path / "models", dtype="fp16", max_mask_disagreement=-1.0)
    assert not (tmp_path / "models" / "generator.pt").exists()


def test_encoder_must_belong_to_the_bundle_generator(gan_run, tmp_path):
    config, run = gan_run
    models = tmp_path / "models"
    generator = export_generator(run, models, dtype="fp16")
    other = tmp_path / "other_generator.pt"
    torch.manual_seed(5)
    torch.save(build_generator(config["model"]).state_dict(), other)

    stray = _encoder_run(config, other, tmp_path / "enc_other")
    with pytest.raises(InputError, match="trained against"):
        export_encoder(stray, models)
    assert not (models / "encoder.pt").exists()

    matching = _encoder_run(config, generator, tmp_path / "enc_ok")
    out = export_encoder(matching, models)
    assert all(v.dtype == torch.float16 for v in torch.load(out, weights_only=True).values() if v.is_floating_point())
    record = json.loads((models / PROVENANCE_NAME).read_text())
    assert set(record) == {"generator.pt", "encoder.pt"}
    # the generator is named relative to the bundle: provenance.json names no folder of this machine
    assert record["encoder.pt"]["generator"].startswith("models/generator.pt sha256:")
    assert str(tmp_path) not in (models / PROVENANCE_NAME).read_text()


def test_cli_names_the_missing_run(tmp_path, capsys):
    code = main(["export", "--gan", str(tmp_path / "nowhere"), "--bundle", str(tmp_path / "b")])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_an_encoder_exported_for_mr_is_used_for_mr_studies_only(gan_run, tmp_path):
    from medsemgan.inference.inferer import TTOInferer
    from medsemgan.inference.model import SegmentationModel
    from medsemgan.inference.tto import TTOOptions

    config, run = gan_run
    bundle = tmp_path / "bundle"
    models = bundle / "models"
    generator = export_generator(run, models, dtype="fp32")
    ct_run = _encoder_run(config, generator, tmp_path / "enc_ct")
    mr_run = _encoder_run(config, generator, tmp_path / "enc_mr", seed=1, modality_augment={"p": 1.0})
    export_encoder(ct_run, models, dtype="fp32")
    with pytest.raises(InputError, match="--modality"):
        export_encoder(mr_run, models, modality="PET")
    out = export_encoder(mr_run, models, dtype="fp32", modality="mr")
    assert out.name == "encoder_mr.pt"
    record = json.loads((models / PROVENANCE_NAME).read_text())
    assert "for MR studies" in record["encoder_mr.pt"]["what"]
    assert record["encoder_mr.pt"]["modality_augment"] == {"p": 1.0}

    model_config = {"model": config["model"], "encoder": {k: v for k, v in ENCODER.items() if k != "train"}}
    model = SegmentationModel.from_bundle(bundle, model_config)
    assert set(model.modality_encoders) == {"MR"}
    assert model.encoder_for("MR") is model.modality_encoders["MR"]
    assert model.encoder_for("CT") is model.encoder and model.encoder_for(None) is model.encoder
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(model.encoder_for("MR")(x), model.encoder(x))  # two different encoders
    inferer = TTOInferer(TTOOptions(steps=0), batch_size=4)
    volume = x.permute(1, 2, 3, 0)[None]  # [1, 1, S, S, 2]
    ct, mr = inferer(volume, model, modality="CT"), inferer(volume, model, modality="MR")
    with torch.no_grad():
        _, expected_mr = model.generator.synthesis(model.encoder_for("MR")(x), noise_mode="const")
    torch.testing.assert_close(mr[0].permute(3, 0, 1, 2), expected_mr, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ct, mr)

    saved = model.save(tmp_path / "copy")
    assert [p.name for p in saved] == ["generator.pt", "encoder.pt", "encoder_mr.pt"]


def test_a_kept_snapshot_exports_with_its_own_images_seen(gan_run, tmp_path):
    import shutil

    from medsemgan.training.run import build_networks, keep_best_snapshot

    config, run = gan_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    G = build_networks(config)[0]  # other weights than the checkpoint's EMA generator
    keep_best_snapshot(copy, G, {"val/dice": 0.4}, 8)
    models = tmp_path / "models"
    state = torch.load(export_generator(copy / "snapshots" / "generator_ema_best.pt", models, dtype="fp32"),
                       weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in G.state_dict().items())
    record = json.loads((models / PROVENANCE_NAME).read_text())["generator.pt"]
    assert record["images_seen"] == 8 and record["source"] == "run/snapshots/generator_ema_best.pt"  # names the run
    assert record["steps"] == 8 // config["training"]["batch_size"]
    numbered = copy / "snapshots" / "generator_ema_000000016.pt"  # the name snapshot_path gives 16 images
    torch.save(G.state_dict(), numbered)
    export_generator(numbered, tmp_path / "numbered", dtype="fp32")
    assert json.loads((tmp_path / "numbered" / PROVENANCE_NAME).read_text())["generator.pt"]["images_seen"] == 16
    (copy / AVERAGED_RECORD).write_text(json.dumps({"snapshots": ["a.pt", "b.pt"], "images_seen": [8, 16]}))
    export_generator(numbered, tmp_path / "averaged", dtype="fp32")
    record = json.loads((tmp_path / "averaged" / PROVENANCE_NAME).read_text())["generator.pt"]
    assert record["averaged_from"]["images_seen"] == [8, 16]  # provenance says it is a mean, not one snapshot
    assert "averaged_from" not in json.loads((tmp_path / "numbered" / PROVENANCE_NAME).read_text())["generator.pt"]
    stray = tmp_path / "snapshots" / "generator_ema_000000008.pt"  # no run around it: nothing says what it is
    stray.parent.mkdir()
    torch.save(G.state_dict(), stray)
    with pytest.raises(InputError, match="not a GAN run's kept snapshot"):
        export_generator(stray, tmp_path / "other")
    assert not (tmp_path / "other").exists()
