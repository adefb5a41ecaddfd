"""``musk vqa``: fine-tune MUSK for visual question answering, evaluate it, ask it about an image.

musk vqa train --data pathvqa/ --output_dir vqa-run          # PathVQA parquet folder or JSONL/CSV
musk vqa eval --data pathvqa/ --split test --model_dir vqa-run/best -o test_predictions.csv
musk vqa ask slide_patch.png "is there evidence of necrosis?" --model_dir vqa-run/best
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..files import write_json
from ..models.weights import weights_option
from ..provenance import provenance
from ..runtime import resolve_device, seed_everything
from ..settings import build, setting_names
from ..training.precision import ACCELERATE_PRECISIONS
from .common import add_model_args, add_runtime_args, output_path, run_config, show_progress

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    vqa = subparsers.add_parser("vqa", help="visual question answering: train, eval, ask", description=__doc__)
    commands = vqa.add_subparsers(dest="vqa_command", required=True)
    _add_train(commands)
    _add_eval(commands)
    _add_ask(commands)


def _add_train(commands) -> None:
    from ..vqa.train import LOSSES, VQATrainConfig

    d = VQATrainConfig()
    p = commands.add_parser("train", help="fine-tune on a VQA dataset", description="Fine-tune MUSK for VQA.")
    p.add_argument("--data", "--dataset_root", dest="data", required=True, help="PathVQA parquet folder, or JSONL/CSV")
    p.add_argument(
        "--output_dir", "-o", required=True, help="where best/, last/ and history.json go; a restart resumes there"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace another (or a finished) training run in --output_dir"
    )
    add_model_args(p, tokenizer=True)
    p.add_argument("--train_split", default=d.train_split, help="default: %(default)s")
    p.add_argument("--val_split", default=d.val_split, help="default: %(default)s; 'none' for no validation")
    p.add_argument("--min_answer_count", type=int, default=d.min_answer_count, help="default: %(default)s")
    p.add_argument("--max_question_length", type=int, default=d.max_question_length, help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    p.add_argument("--grad_accum", type=int, default=d.grad_accum, help="gradient accumulation (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the top layer (default: %(default)s)")
    p.add_argument(
        "--layer_decay", type=float, default=d.layer_decay, help="layer-wise lr decay (default: %(default)s)"
    )
    p.add_argument("--weight_decay", type=float, default=d.weight_decay, help="default: %(default)s")
    p.add_argument("--warmup_ratio", type=float, default=d.warmup_ratio, help="default: %(default)s")
    p.add_argument("--loss", choices=LOSSES, default=d.loss, help="default: %(default)s")
    p.add_argument("--label_smoothing", type=float, default=d.label_smoothing, help="default: %(default)s")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping, 0 = off (default: %(default)s)")
    p.add_argument("--grad_checkpointing", action="store_true", help="recompute activations to save memory")
    group = p.add_argument_group("runtime")
    group.add_argument("--device", default="auto", help="auto or cpu (GPUs: accelerate launch) (default: %(default)s)")
    group.add_argument("--precision", choices=ACCELERATE_PRECISIONS, default=d.precision,
                       help="accelerate's mixed precision; auto: bf16 or fp16 on GPUs, fp32 on CPU (default: "
                       "%(default)s)")  # fmt: skip
    group.add_argument("--batch_size", type=int, default=d.batch_size, help="per process (default: %(default)s)")
    group.add_argument("--num_workers", type=int, default=d.num_workers, help="default: %(default)s")
    group.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.set_defaults(run=run_train)


def _add_eval(commands) -> None:
    p = commands.add_parser("eval", help="accuracy of a trained model on a split", description="Evaluate a VQA model.")
    p.add_argument("--data", "--dataset_root", dest="data", required=True, help="PathVQA parquet folder, or JSONL/CSV")
    p.add_argument("--split", default="test", help="default: %(default)s")
    p.add_argument("--model_dir", required=True, help="a folder written by `musk vqa train` (or its best/)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.spm (default: the model folder's own)")
    p.add_argument("--output", "-o", default=None, help="predictions CSV (metrics JSON written beside it)")
    add_runtime_args(p)
    p.set_defaults(run=run_eval)


def _add_ask(commands) -> None:
    p = commands.add_parser("ask", help="answer a question about an image", description="Ask a VQA model.")
    p.add_argument("image", help="image file")
    p.add_argument("question", help="the question, quoted")
    p.add_argument("--model_dir", required=True, help="a folder written by `musk vqa train` (or its best/)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.spm (default: the model folder's own)")
    p.add_argument("--top_k", type=int, default=5, help="answers to list (default: %(default)s)")
    p.add_argument("--device", default="auto", help="default: %(default)s")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_ask)


def run_train(args: argparse.Namespace) -> int:
    from ..vqa.train import VQATrainConfig, train_vqa

    values = {k: v for k, v in vars(args).items() if k in setting_names(VQATrainConfig)}
    values.update(weights=weights_option(args.weights), cpu=args.device == "cpu", progress=show_progress())
    result = train_vqa(build(VQATrainConfig, values, "musk vqa train"))
    print(json.dumps({"best_dir": str(result.best_dir), "best_epoch": result.best_epoch,
                      "best_accuracy": result.best_accuracy, "answers": result.num_answers}))  # fmt: skip
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..vqa import evaluate_vqa, load_split, load_vqa_model, write_predictions_csv

    output = output_path(args.output) if args.output else None
    seed_everything(args.seed)
    saved = load_vqa_model(args.model_dir, resolve_device(args.device), args.tokenizer, args.precision)
    report = evaluate_vqa(saved, load_split(args.data, args.split), args.batch_size, args.num_workers, show_progress())
    print(json.dumps(report.metrics, indent=2))
    if output is not None:
        write_predictions_csv(output, report)
        write_json(output.with_suffix(".json"), {**provenance(run_config(args), saved.weights_file),
                                                 "metrics": report.metrics})  # fmt: skip
    return 0


def run_ask(args: argparse.Namespace) -> int:
    from ..vqa import answer_question, load_vqa_model

    saved = load_vqa_model(args.model_dir, device=resolve_device(args.device), tokenizer=args.tokenizer)
    answers = answer_question(saved, args.image, args.question, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"answer": a, "probability": p} for a, p in answers]))
    else:
        width = max(len(a) for a, _ in answers)
        sys.stdout.write("".join(f"{a:<{width}}  {p:.4f}\n" for a, p in answers))
    return 0
