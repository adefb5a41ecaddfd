"""``musk bench``: the patch-level benchmark (``eval``) and the merging of its results (``build``).

The ``eval`` flags are the upstream CLIP_benchmark ones, so an upstream command line runs after replacing
``python3 -m clip_benchmark.cli`` by ``musk bench``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..bench.build import build
from ..bench.datasets import DATASETS
from ..bench.models import parse_models
from ..bench.runner import BenchConfig, run_benchmark
from ..bench.tasks import TASKS
from ..runtime import PRECISIONS, resolve_device
from ..settings import build as build_settings
from .common import positive_int, show_progress

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench", help="patch-level benchmark: evaluate models, build tables", description=__doc__
    )
    commands = bench.add_subparsers(dest="bench_command", required=True)
    add_eval_parser(commands)
    p = commands.add_parser("build", help="merge result files into a CSV, a markdown table and PNG plots")
    p.add_argument("files", nargs="+", help="result files written by 'musk bench eval'")
    p.add_argument("--output", default="benchmark.csv", help="CSV to write; the .md and <stem>_plots/ go beside it")
    p.set_defaults(run=run_build)


def add_eval_parser(commands) -> None:
    p = commands.add_parser("eval", help="evaluate models on datasets")
    p.add_argument(
        "--pretrained_model",
        nargs="+",
        required=True,
        help="'model,pretrained' entries and/or models.txt files with one such line each "
        "(e.g. musk_large_patch16_384,hf_hub:xiangjx/musk; open_clip:<name>,<tag>; timm:<name>,<file>)",
    )
    p.add_argument(
        "--dataset",
        nargs="+",
        required=True,
        help=f"dataset names or text files listing them; known: {', '.join(sorted(DATASETS))}, folder:/path, csv:/path",
    )
    p.add_argument(
        "--dataset_root",
        default="root",
        help="folder holding the datasets (their usual subfolders are found) or a template with {dataset}",
    )
    p.add_argument("--task", default="auto", choices=["auto", *TASKS], help="default: the dataset's own task")
    p.add_argument("--recall_k", nargs="+", type=int, default=[5], help="k of recall@k for retrieval (default: 5)")
    p.add_argument(
        "--fewshot_k",
        nargs="+",
        type=int,
        default=[-1],
        help="training examples per class for linear_probe and knn; -1 = all (default)",
    )
    p.add_argument("--fewshot_epochs", type=int, default=10, help="linear probe epochs (default: 10)")
    p.add_argument("--fewshot_lr", type=float, default=0.1, help="linear probe learning rate (default: 0.1)")
    p.add_argument(
        "--fewshot_weight_decay",
        nargs="+",
        type=float,
        default=[0.0],
        help="linear probe weight decay; several values: chosen on a 20%% validation hold-out",
    )
    p.add_argument("--batch_size_eval", type=int, default=256, help="linear probe batch size (default: 256)")
    p.add_argument("--knn_k", type=positive_int, default=20, help="neighbours of the knn probe (default: 20)")
    p.add_argument("--ms_aug", action="store_true", help="multi-scale MUSK features for linear_probe and knn")
    p.add_argument(
        "--output",
        default="result.json",
        help="results file (JSON Lines); may use {model} {pretrained} {dataset} {task} {fewshot_k} {seed}",
    )
    p.add_argument("--skip_existing", action="store_true", help="skip runs already recorded in their output file")
    p.add_argument("--feature_root", default="features", help="feature cache folder (default: %(default)s)")
    p.add_argument("--no_feature_cache", action="store_true", help="keep features in memory only")
    p.add_argument("--tokenizer", default=None, help="MUSK tokenizer.spm (default: beside local weights, else the hub)")
    p.add_argument("--custom_classname_file", default=None, help="JSON: dataset name -> list of class names")
    p.add_argument("--custom_template_file", default=None, help="JSON: dataset name -> list of prompt templates")
    p.add_argument("--model_cache_dir", default=None, help="download cache for hub models")
    runtime = p.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ... (default: %(default)s)")
    runtime.add_argument("--precision", choices=PRECISIONS, default="fp32", help="default: %(default)s")
    runtime.add_argument("--batch_size", type=int, default=64, help="images per batch (default: %(default)s)")
    runtime.add_argument("--num_workers", type=int, default=4, help="image loading processes (default: %(default)s)")
    runtime.add_argument("--seed", nargs="+", type=int, default=[0], help="seed(s); linear_probe and knn run each")
    p.set_defaults(run=run_eval)


def _dataset_names(entries: list[str]) -> list[str]:
    names = []
    for entry in entries:
        path = Path(entry)
        if entry not in DATASETS and ":" not in entry and path.is_file():
            names += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            names.append(entry)
    return names


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    values = dict(
        models=parse_models(args.pretrained_model),
        datasets=_dataset_names(args.dataset),
        dataset_root=args.dataset_root,
        task=args.task,
        output=args.output,
        recall_k=args.recall_k,
        fewshot_k=args.fewshot_k,
        seeds=args.seed,
        fewshot_epochs=args.fewshot_epochs,
        fewshot_lr=args.fewshot_lr,
        weight_decays=args.fewshot_weight_decay,
        probe_batch_size=args.batch_size_eval,
        knn_k=args.knn_k,
        ms_aug=args.ms_aug,
        skip_existing=args.skip_existing,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=str(resolve_device(args.device)),
        precision=args.precision,
        feature_root=None if args.no_feature_cache else args.feature_root,
        tokenizer=args.tokenizer,
        custom_classname_file=args.custom_classname_file,
        custom_template_file=args.custom_template_file,
        cache_dir=args.model_cache_dir,
        progress=show_progress(),
    )
    return build_settings(BenchConfig, values, source="musk bench eval")


def run_eval(args: argparse.Namespace) -> int:
    records = run_benchmark(config_from_args(args))
    for record in records:
        scalars = {k: round(v, 4) for k, v in record["metrics"].items() if isinstance(v, float)}
        logger.info(
            "%s %s %s k=%s seed=%s: %s",
            record["model"],
            record["dataset"],
            record["task"],
            record["fewshot_k"],
            record["seed"],
            scalars,
        )
    return 0


def run_build(args: argparse.Namespace) -> int:
    written = build(args.files, args.output)
    for kind, paths in written.items():
        for path in paths:
            logger.info("%s: %s", kind, path)
    return 0
