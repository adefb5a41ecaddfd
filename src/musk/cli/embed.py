"""``musk embed``: image files or folders -> an embeddings file with the file list.

Python: ``musk.load(...).embed_images(files, with_head=False, normalize=False)`` (this command's defaults), then
``.save("emb.npz")``.
"""

from __future__ import annotations

import argparse
import logging

from ..files import write_json
from ..images import DEFAULT_MAX_PIXELS, list_images
from ..provenance import provenance
from .common import add_model_args, add_runtime_args, loaded_from_args, output_path, run_config, show_progress

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("embed", help="embed images into an .npz file", description=__doc__)
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--output", "-o", required=True, help="the .npz to write (a .json with provenance goes beside it)")
    p.add_argument("--ms_aug", action="store_true", help="multi-scale features (2 x width without the head)")
    p.add_argument("--with_head", action="store_true", help="apply the projection head (for retrieval)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    add_image_limit_arg(p)
    add_model_args(p)
    add_runtime_args(p, streams=True)
    p.set_defaults(run=run)


def add_image_limit_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max_pixels", type=int, default=DEFAULT_MAX_PIXELS,
        help="refuse images larger than this (width x height), from their header (default: %(default)s)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    output = output_path(args.output, suffixes=(".npz",))
    paths = list_images(args.images)
    loaded = loaded_from_args(args)
    result = loaded.embed_images(
        paths,
        with_head=args.with_head,
        normalize=args.normalize,
        ms_aug=args.ms_aug,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        streams=args.streams,
        progress=show_progress(),
        max_pixels=args.max_pixels,
    )
    result.save(output)
    record = provenance(run_config(args), loaded.fingerprint)
    record["outputs"] = {"embeddings": len(result.files), "shape": list(result.vectors.shape), "failed": result.failed}
    write_json(output.with_suffix(".json"), record)
    logger.info("wrote %s: %d embeddings of width %d", output, *result.vectors.shape)
    for name, error in result.failed.items():
        logger.error("failed: %s (%s)", name, error)
    return 1 if result.failed else 0
