"""Thin adapters that let the MONAI bundle ``bundles/medsemgan_liver`` assemble ``medsemgan``.

The bundle's JSON configs build MONAI objects (datasets, an evaluator, transforms) from the
project's own pieces; this package holds only what a config cannot express in one line:

* :mod:`.transforms`: modality-dependent preprocessing as one invertible transform, label loading,
  and the mask writer used after ``Invertd``;
* :mod:`.inference`: the study list, the network and the inferer, built exactly as
  ``medsemgan segment`` builds them (same code, so the masks are identical);
* :mod:`.handlers`: per-case metrics (CHAOS definitions) for ``evaluate.json``;
* :mod:`.training`: run components that call the training entry points;
* :mod:`.demo` / :mod:`.make_sample`: ``medsemgan demo`` and the synthetic sample it segments.
"""
