"""Data layer: readers, catalogue of known sources, MONAI transforms, slice datasets."""
