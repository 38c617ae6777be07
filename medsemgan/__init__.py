"""medsemgan: semi-supervised liver segmentation in CT and MRI with a joint image-label StyleGAN2.

Layout (data flows one way): ``data`` -> ``models``/``ops`` -> ``training`` -> ``inference``
-> ``evaluation``; ``cli`` and ``bundles/`` only assemble these.

The Python API (``medsemgan.api``, docs/api.md)::

    from medsemgan import load_model, segment
    model = load_model()                      # the bundle's generator + encoders
    mask = segment(model, "study.nii.gz")     # nibabel image on the study's grid

``import medsemgan`` stays cheap: ``load_model`` and ``segment`` import torch and MONAI on first use.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "segment"]

_API = ("load_model", "segment")


def __getattr__(name: str):
    if name in _API:
        from medsemgan import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
