"""Inference: encoder + test-time optimization inferer, volume segmentation, writers."""
