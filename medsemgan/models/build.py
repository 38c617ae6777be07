"""Build the three networks of the method from a model configuration."""

from __future__ import annotations

from medsemgan.models.config import model_config_from_dict
from medsemgan.models.discriminator import ImageDiscriminator
from medsemgan.models.generator import Generator
from medsemgan.models.joint_discriminator import JointDiscriminator


def build_generator(cfg: dict) -> Generator:
    cfg = _model_section(cfg)
    return Generator(
        resolution=cfg["resolution"], img_channels=cfg["img_channels"], num_labels=cfg["num_labels"],
        **cfg["generator"],
    )


def build_image_discriminator(cfg: dict) -> ImageDiscriminator:
    cfg = _model_section(cfg)
    return ImageDiscriminator(
        resolution=cfg["resolution"], img_channels=cfg["img_channels"], **cfg["image_discriminator"]
    )


def build_joint_discriminator(cfg: dict) -> JointDiscriminator:
    cfg = _model_section(cfg)
    return JointDiscriminator(
        img_channels=cfg["img_channels"], num_labels=cfg["num_labels"], **cfg["joint_discriminator"]
    )


def build_models(cfg: dict) -> tuple[Generator, ImageDiscriminator, JointDiscriminator]:
    """``cfg``: from :func:`medsemgan.models.config.load_model_config` (or a whole config file's
    dict with a ``model:`` key). Returns ``(G, D_image, D_joint)`` on the CPU in train mode."""
    return build_generator(cfg), build_image_discriminator(cfg), build_joint_discriminator(cfg)


def _model_section(cfg: dict) -> dict:
    if "model" in cfg and isinstance(cfg["model"], dict):
        cfg = cfg["model"]
    return model_config_from_dict(cfg)


__all__ = ["build_models", "build_generator", "build_image_discriminator", "build_joint_discriminator"]
