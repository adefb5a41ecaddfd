"""Whole-slide images: readers, tissue segmentation, patching, feature extraction to h5, overlays."""
