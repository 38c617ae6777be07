"""Benchmarks behind ``medsemgan bench``: each compares fast vs reference paths in one run."""
