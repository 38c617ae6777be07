"""Evaluation: CHAOS-conformant metrics, evaluate command, cross-modality report."""
