"""``musk wsi``: whole-slide images to tissue masks, patch coordinates, MUSK features (h5) and zero-shot maps.

musk wsi segment --slides slides/ --job_dir job             # thumbnails, tissue masks, contour overlays
musk wsi patch   --slides slides/ --job_dir job --mag 20    # + patches/<slide>.h5 (coords)
musk wsi extract --slides slides/ --job_dir job --features cls --batch_size 64 --num_workers 8
musk wsi run     --slides list.csv --job_dir job --classes tumor stroma necrosis   # all stages
musk wsi heatmap --job_dir job --classes tumor stroma       # zero-shot maps from the job's features

Every stage resumes: finished slides are skipped. Several GPUs or nodes: `accelerate launch -m musk wsi extract ...`.
The exit status is 1 when any slide failed (see job/status.csv), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json

from ..images import DEFAULT_MAX_PIXELS
from ..models.weights import weights_option
from ..settings import build, setting_names
from ..zeroshot import DEFAULT_TEMPLATES
from .common import TOKENIZER_HELP, add_model_args, add_runtime_args, positive_float, positive_int, show_progress


def add_parser(subparsers) -> None:
    wsi = subparsers.add_parser("wsi", help="whole-slide images: segment, patch, extract, heatmap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = wsi.add_subparsers(dest="wsi_command", required=True)
    helps = {
        "segment": "tissue masks and contour overlays",
        "patch": "tissue patch coordinates at a magnification",
        "extract": "MUSK features of every tissue patch (h5)",
        "run": "segment, patch, extract and (with --classes) zero-shot maps",
        "heatmap": "zero-shot tissue maps from extracted features",
    }
    for name, help_text in helps.items():
        p = commands.add_parser(name, help=help_text, description=help_text)
        _add_job_args(p, slides_required=name != "heatmap")
        if name != "heatmap":  # the heatmap stage uses the job's own settings
            _add_segment_args(p)
        if name not in ("segment", "heatmap"):
            _add_patch_args(p)
        if name in ("extract", "run"):
            add_model_args(p)
            p.add_argument("--features", choices=("cls", "ms", "proj"), default="cls",
                           help="cls: 1024-d CLS (TRIDENT); ms: 2048-d multi-scale; proj: head + normalised "
                                "(default: %(default)s)")  # fmt: skip
        if name in ("extract", "run", "heatmap"):
            add_runtime_args(p, streams=name != "heatmap")
        if name in ("run", "heatmap"):
            _add_zeroshot_args(p, required=name == "heatmap")
        if name == "heatmap":
            p.set_defaults(precision=None)  # the job's
        p.set_defaults(run=run, stage=name)


def _add_job_args(p: argparse.ArgumentParser, slides_required: bool) -> None:
    p.add_argument("--slides", nargs="+", required=slides_required,
                   help="a folder of slides, a CSV with a 'path' (and optional 'mpp') column, or slide files"
                        + ("" if slides_required else " (default: those of the job)"))  # fmt: skip
    p.add_argument("--job_dir", required=True, help="where every output and the status go (resumable)")
    if slides_required:  # (the heatmap stage keeps the job's)
        p.add_argument(
            "--mpp", type=positive_float, default=None, help="microns per level-0 pixel, overriding metadata"
        )
    p.add_argument("--max_pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="largest plain-image slide (PNG, JPEG, untiled TIFF) decoded, checked before decoding "
                        "(default: %(default)s)")  # fmt: skip


def _add_segment_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tissue segmentation")
    g.add_argument("--thumbnail_size", type=positive_int, default=2048, help="longer side (default: %(default)s)")
    g.add_argument("--min_saturation", type=float, default=0.08, help="tissue floor (default: %(default)s)")
    g.add_argument("--max_saturation", type=float, default=0.2,
                   help="the threshold's ceiling: an all-tissue field stays tissue (default: %(default)s)")  # fmt: skip
    g.add_argument("--min_area_um2", type=float, default=20_000, help="smallest tissue piece (default: %(default)s)")
    g.add_argument("--max_hole_um2", type=float, default=5_000, help="holes filled up to (default: %(default)s)")


def _add_patch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("patching")
    g.add_argument("--mag", type=positive_float, default=20.0, help="target magnification (default: %(default)s)")
    g.add_argument(
        "--target_mpp", type=positive_float, default=None, help="target microns per pixel (instead of --mag)"
    )
    g.add_argument("--patch_size", type=positive_int, default=384, help="pixels at the target (default: %(default)s)")
    g.add_argument("--overlap", type=int, default=0, help="pixels at the target (default: %(default)s)")
    g.add_argument("--min_tissue", type=float, default=0.5, help="tissue fraction per patch (default: %(default)s)")


def _add_zeroshot_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("zero-shot tissue map")
    g.add_argument("--classes", nargs="+", required=required, default=[], help="class names, e.g. tumor stroma")
    g.add_argument("--templates", nargs="+", default=list(DEFAULT_TEMPLATES), help="prompts with {} for the class")
    g.add_argument("--tokenizer", default=None, help=TOKENIZER_HELP)


def job_settings(args: argparse.Namespace) -> dict:
    """The :class:`musk.wsi.WsiJobConfig` values the options give (``heatmap``: no ``--precision`` is the job's)."""
    from ..wsi import WsiJobConfig

    values = {name: getattr(args, name) for name in setting_names(WsiJobConfig) if hasattr(args, name)}
    if hasattr(args, "mag"):
        values["magnification"] = None if args.target_mpp is not None else args.mag
    if "weights" in values:
        values["weights"] = weights_option(values["weights"])
    if values.get("precision", "") is None:
        del values["precision"]
    return values | {"progress": show_progress()}


def run(args: argparse.Namespace) -> int:
    from ..wsi import WsiJobConfig, heatmap_job, run_wsi_job

    settings = job_settings(args)
    if args.stage == "heatmap":
        result = heatmap_job(args.job_dir, settings.pop("classes"), args.slides, **settings)
    else:
        stages = (("heatmap",) if args.classes else ("extract",)) if args.stage == "run" else (args.stage,)
        result = run_wsi_job(args.slides, args.job_dir, build(WsiJobConfig, settings, "the command line"), stages)
    print(json.dumps(result.summary, indent=2))
    return 1 if result.failed else 0
