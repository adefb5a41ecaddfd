"""``musk zeroshot``: images + class names -> a table of class probabilities.

Python: ``musk.load(...).classify(files, class_names, templates)`` and ``musk.zeroshot.write_table``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..files import write_json
from ..images import list_images
from ..provenance import provenance
from ..zeroshot import DEFAULT_TEMPLATES, class_prompts, write_table
from .common import add_model_args, add_runtime_args, loaded_from_args, output_path, run_config, show_progress
from .embed import add_image_limit_arg

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("zeroshot", help="classify images from class names", description=__doc__)
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--classes", nargs="+", required=True, help="class names, e.g. 'lung adenocarcinoma'")
    p.add_argument(
        "--templates", nargs="+", default=list(DEFAULT_TEMPLATES), help="prompt templates with {} for the class"
    )
    p.add_argument("--output", "-o", default=None, help="CSV to write (a .json with provenance goes beside it)")
    add_image_limit_arg(p)
    add_model_args(p, tokenizer=True)
    add_runtime_args(p, streams=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    output = output_path(args.output) if args.output else None
    class_prompts(args.classes, args.templates)  # bad names or templates fail before the model loads
    paths = list_images(args.images)
    loaded = loaded_from_args(args)
    result = loaded.classify(
        paths,
        args.classes,
        args.templates,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        streams=args.streams,
        progress=show_progress(),
        max_pixels=args.max_pixels,
    )
    write_table(result, sys.stdout)
    if output is not None:
        write_table(result, output)
        config = run_config(args)
        config["tokenizer"] = str(loaded.tokenizer.model_file)  # as resolved: given, beside the weights, or hub
        write_json(output.with_suffix(".json"), provenance(config, loaded.fingerprint))
    for name, error in result.failed.items():
        logger.error("failed: %s (%s)", name, error)
    return 1 if result.failed else 0
