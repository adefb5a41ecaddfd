"""Whole-slide images: readers, tissue segmentation, patching, feature extraction to h5, overlays.

    from musk.wsi import WsiJobConfig, heatmap_job, run_wsi_job
    run_wsi_job("slides/", "job", WsiJobConfig(features="cls"))     # what `musk wsi extract` does
    heatmap_job("job", ["tumor", "stroma"])                          # what `musk wsi heatmap` does

or step by step: ``open_slide`` -> ``segment_tissue`` -> ``plan_patches`` -> ``extract_slide_features`` ->
``write_patch_file``.
"""

from .config import STAGES, WsiJobConfig
from .dataset import PatchPreprocessing, SlidePatchDataset
from .extract import FEATURE_KINDS, extract_slide_features
from .h5 import PatchFile, read_patch_file, write_patch_file
from .job import JobResult, heatmap_job, run_wsi_job
from .overlay import add_colour_scale, heatmap_overlay
from .patching import PatchGrid, plan_patches
from .readers import SlideError, SlideReader, open_slide
from .slides import SlideEntry, list_slides
from .tissue import TissueMask, contour_overlay, segment_tissue
from .zeroshot_map import add_zeroshot_map, patch_probabilities

__all__ = [
    "FEATURE_KINDS",
    "STAGES",
    "JobResult",
    "PatchFile",
    "PatchGrid",
    "PatchPreprocessing",
    "SlideEntry",
    "SlideError",
    "SlidePatchDataset",
    "SlideReader",
    "TissueMask",
    "WsiJobConfig",
    "add_colour_scale",
    "add_zeroshot_map",
    "contour_overlay",
    "extract_slide_features",
    "heatmap_job",
    "heatmap_overlay",
    "list_slides",
    "open_slide",
    "patch_probabilities",
    "plan_patches",
    "read_patch_file",
    "run_wsi_job",
    "segment_tissue",
    "write_patch_file",
]
