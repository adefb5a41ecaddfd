"""``musk pretrain``: the MUSK pretraining stages and the export of their weights.

musk pretrain tokenizer --recipe large --images tiles/ --output_dir vqkd
musk pretrain mim --recipe large --images shards/ --texts reports.jsonl --set visual_tokenizer=vqkd -o stage1
musk pretrain contrastive --recipe large --pairs pairs.csv --set weights=stage1 --output_dir stage2
   (--tokenizer tokenizer.spm for stages 1 and 2; default: beside local weights, else the hub's)
musk pretrain export stage2 -o musk_pretrained.safetensors

Any recipe value can be set with --set key=value (lists comma-separated). For several GPUs or processes run
the same command under `accelerate launch` (see docs/pretrain.md).
"""

from __future__ import annotations

import argparse
import json

from ..runtime import DTYPES
from ..settings import parse_overrides
from ..training.precision import ACCELERATE_PRECISIONS
from .common import TOKENIZER_HELP, show_progress

_INPUTS = {"tokenizer": ("images",), "mim": ("images", "texts"), "contrastive": ("pairs",)}
_HELP = {
    "tokenizer": "stage 0: train the VQ-KD visual tokenizer",
    "mim": "stage 1: masked image + language modelling on unpaired data",
    "contrastive": "stage 2: image-text contrastive alignment",
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="pretraining: tokenizer, mim, contrastive, export", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = p.add_subparsers(dest="pretrain_command", required=True)
    for stage, inputs in _INPUTS.items():
        _add_stage(commands, stage, inputs)
    e = commands.add_parser("export", help="write a run's MUSK weights in the published layout")
    e.add_argument("source", help="a run's output folder (its best checkpoint by held-out retrieval, else its "
                   "newest) or one checkpoint folder")  # fmt: skip
    e.add_argument("--output", "-o", required=True, help="the .safetensors file to write")
    e.add_argument("--model", default=None, help="architecture (default: from the run's config.yaml)")
    e.add_argument("--precision", choices=sorted(DTYPES), default=None, help="cast the weights (default: as saved)")
    e.set_defaults(run=run_export)


def _add_stage(commands, stage: str, inputs: tuple[str, ...]) -> None:
    p = commands.add_parser(stage, help=_HELP[stage], description=_HELP[stage])
    p.add_argument("--recipe", default="large", help="shipped recipe (tiny, large) or a YAML file (default: large)")
    p.add_argument("--output_dir", "-o", default=None, help="where checkpoints, logs and config go")
    for name in inputs:
        p.add_argument(f"--{name}", nargs="+", default=None, help=f"{name}: files, folders or tar shards")
    if stage != "tokenizer":
        p.add_argument("--tokenizer", default=None, help=f"{TOKENIZER_HELP}; also --set tokenizer=PATH")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value (repeatable)")  # fmt: skip
    group = p.add_argument_group("runtime")
    group.add_argument("--device", default=None, help="cpu to force the CPU (GPUs: accelerate launch)")
    group.add_argument("--precision", choices=ACCELERATE_PRECISIONS, default=None,
                       help="accelerate's mixed precision; auto: bf16 or fp16 on GPUs, fp32 on CPU")  # fmt: skip
    group.add_argument("--batch_size", type=int, default=None, help="global batch per optimizer step")
    group.add_argument("--num_workers", type=int, default=None)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--steps", type=int, default=None)
    p.set_defaults(run=run_stage, stage=stage, inputs=inputs)


def stage_overrides(args: argparse.Namespace) -> dict:
    """The recipe overrides a stage command line gives."""
    values = parse_overrides(args.overrides)
    for name in (*args.inputs, "tokenizer", "output_dir", "precision", "batch_size", "num_workers", "seed", "steps"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if args.device is not None:
        if args.device not in ("cpu", "auto", "cuda"):
            raise ValueError(f"--device {args.device}: use cpu, or accelerate launch to choose GPUs")
        values["cpu"] = args.device == "cpu"
    return values


def run_stage(args: argparse.Namespace) -> int:
    from ..pretrain import load_config, train_contrastive, train_mim, train_tokenizer

    config = load_config(args.stage, args.recipe, {"progress": show_progress(), **stage_overrides(args)})
    train = {"tokenizer": train_tokenizer, "mim": train_mim, "contrastive": train_contrastive}[args.stage]
    result = train(config)
    print(json.dumps({"output_dir": str(result.output_dir), "steps": result.steps,
                      "checkpoint": str(result.checkpoint), "metrics": result.last_metrics}))  # fmt: skip
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..pretrain import export_weights

    dtype = DTYPES[args.precision] if args.precision else None
    print(export_weights(args.source, args.output, model=args.model, dtype=dtype))
    return 0
