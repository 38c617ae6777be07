"""Fixtures for the data-layer tests: real studies loaded once per session."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="session")
def study_cache(shared_data):
    """``get(name)``: a catalogued study loaded once per test session."""
    from medsemgan.data.catalogue import get_study

    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study = get_study(shared_data, name)
                cache[name] = {"study": study, **study.load()}
        return cache[name]

    return get
