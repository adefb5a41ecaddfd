"""``musk zeroshot``: images + class names -> a table of class probabilities."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import torch

from ..embedding import embed_images
from ..files import atomic_path, write_json
from ..images import list_images
from ..models.loading import parse_hub_id, resolve_weights
from ..provenance import provenance
from ..tokenizer import TOKENIZER_FILENAME, get_tokenizer
from ..zeroshot import DEFAULT_TEMPLATES, class_embeddings, class_prompts, probabilities
from .common import add_model_args, add_runtime_args, model_from_args, output_path, run_config, show_progress

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("zeroshot", help="classify images from class names", description=__doc__)
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--classes", nargs="+", required=True, help="class names, e.g. 'lung adenocarcinoma'")
    p.add_argument(
        "--templates", nargs="+", default=list(DEFAULT_TEMPLATES), help="prompt templates with {} for the class"
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.spm path (default: beside local weights, else from the hub with the weights)",
    )
    p.add_argument("--output", "-o", default=None, help="CSV to write (a .json with provenance goes beside it)")
    add_model_args(p)
    add_runtime_args(p, streams=True)
    p.set_defaults(run=run)


def tokenizer_source(tokenizer: str | None, weights: str) -> Path | None:
    """The tokenizer to use: the one given, else ``tokenizer.spm`` beside local weights, else None (the hub)."""
    if tokenizer:
        return Path(tokenizer)
    if parse_hub_id(weights) is None:
        local = Path(weights).expanduser()
        candidate = (local if local.is_dir() else local.parent) / TOKENIZER_FILENAME
        if candidate.is_file():
            return candidate
    return None


def run(args: argparse.Namespace) -> int:
    output = output_path(args.output) if args.output else None
    class_prompts(args.classes, args.templates)  # bad names or templates fail before the model loads
    paths = list_images(args.images)
    model = model_from_args(args)
    tokenizer = get_tokenizer(tokenizer_source(args.tokenizer, args.weights), cache_dir=args.cache_dir)
    classes = class_embeddings(model, tokenizer, args.classes, args.templates)
    result = embed_images(
        model,
        paths,
        with_head=True,
        normalize=True,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        streams=args.streams,
        progress=show_progress(),
    )
    probs = probabilities(model, torch.from_numpy(result.vectors), classes)
    predictions = probs.argmax(dim=-1).tolist()
    rows = [
        [name, *(f"{p:.4f}" for p in row), args.classes[best]]
        for name, row, best in zip(result.files, probs.tolist(), predictions, strict=True)
    ]
    rows += [[name, *([""] * len(args.classes)), "FAILED: " + error] for name, error in result.failed.items()]
    header = ["file", *args.classes, "prediction"]
    csv.writer(sys.stdout).writerows([header, *rows])
    if output is not None:
        with atomic_path(output) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        config = run_config(args)
        config["tokenizer"] = str(tokenizer.model_file)  # as resolved: given, beside the weights, or hub
        write_json(output.with_suffix(".json"), provenance(config, resolve_weights(args.weights, args.cache_dir)))
    for name, error in result.failed.items():
        logger.error("failed: %s (%s)", name, error)
    return 1 if result.failed else 0
