"""``musk mil``: slide-level models on patch features (ABMIL, mean pooling, transformer; report fusion).

musk mil train --manifest cohort.csv --features_dir features/ --output_dir run/ --task classification
musk mil train --config run.yaml --folds 10                  # YAML keys = flag names; flags override
musk mil eval --model_dir run/ --manifest external.csv --features_dir ext_features/ --output_dir ext_eval/
musk mil predict --model_dir run/ --manifest new.csv --features_dir new_features/ --output_dir new_pred/
musk mil heatmap --model_dir run/ --features features/slide1.h5 --slides slide1.svs --output_dir heatmaps/
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..models import NO_WEIGHTS, PUBLISHED
from ..runtime import PRECISIONS
from .common import TOKENIZER_HELP, show_progress

if TYPE_CHECKING:
    from ..mil.predict import MILApplyConfig

#: Parsed values that are not settings of a run.
_NOT_SETTINGS = ("run", "command", "mil_command", "verbose", "config")
_PRECISION_HELP = "inference precision: the models' weights and inputs are cast to it (default: %(default)s)"


def add_parser(subparsers) -> None:
    mil = subparsers.add_parser("mil", help="slide-level models: train, eval, predict, heatmap", description=__doc__)
    commands = mil.add_subparsers(dest="mil_command", required=True)
    _add_train(commands)
    _add_apply(commands, "eval", "metrics of trained models on a labelled cohort", run_eval)
    _add_apply(commands, "predict", "predictions of trained models for a cohort", run_predict)
    _add_heatmap(commands)


def _add_runtime(p: argparse.ArgumentParser, batch_size: int | None) -> None:
    group = p.add_argument_group("runtime")
    group.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps ... (default: auto)")
    group.add_argument(
        "--precision", choices=PRECISIONS, help="autocast, with gradient scaling for fp16 (default: fp32)"
    )
    group.add_argument("--batch_size", type=int, help=f"cases per step (default: {batch_size})")
    group.add_argument("--num_workers", type=int, help="bag loading processes (default: 0)")
    group.add_argument("--seed", type=int, help="default: 0")


def _by_task(name: str) -> str:
    from ..mil.train import TASK_DEFAULTS

    return "default: " + ", ".join(f"{values[name]} for {task}" for task, values in TASK_DEFAULTS.items())


def _add_survival_options(p, d) -> None:
    from ..mil.losses import HAZARDS, SURVIVAL_LOSSES
    from ..mil.train import STARTS

    p.add_argument("--survival_loss", choices=SURVIVAL_LOSSES, help=f"default: {d.survival_loss}")
    p.add_argument("--n_bins", type=int, help=f"time bins of the nll loss (default: {d.n_bins})")
    p.add_argument(
        "--hazards", choices=HAZARDS, help=f"nll loss: how the bins share the risk score (default: {d.hazards})"
    )
    p.add_argument(
        "--uncensored_weight",
        type=float,
        help=f"nll loss: censored cases count 1 - this (default: {d.uncensored_weight})",
    )
    p.add_argument(
        "--start",
        choices=STARTS,
        help="zero: every case starts alike; baseline (survival): the fold's ridge Cox risk is part of the outputs, "
        "and the model learns what it misses; both (survival): one model from each, their standardised risks "
        f"averaged ({_by_task('start')})",
    )


def _add_train(commands) -> None:
    from ..mil.fit import BALANCING, OPTIMIZERS, SELECTIONS
    from ..mil.manifest import TASKS
    from ..mil.models import AGGREGATORS, FUSIONS
    from ..mil.train import MILTrainConfig

    d = MILTrainConfig()
    p = commands.add_parser(
        "train",
        help="patient-level cross-validation",
        description="Cross-validate a slide-level model; writes results.json, predictions.csv, fold models.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of options (keys = flag names); flags given here override it")
    p.add_argument("--manifest", help="CSV: slide_id, case_id, then label or time + event (1 = observed)")
    p.add_argument("--features_dir", help="folder of <slide_id>.h5 feature files")
    p.add_argument("--output_dir", "-o", help=f"default: {d.output_dir}")
    p.add_argument("--task", choices=TASKS, help=f"default: {d.task}")
    p.add_argument(
        "--model", choices=AGGREGATORS, help=f"slide aggregator; linear = the linear baseline (default: {d.model})"
    )
    p.add_argument(
        "--baseline", action="store_true", help="also report the linear baseline in the same folds (results.json)"
    )
    p.add_argument(
        "--fusion", choices=FUSIONS, help=f"none = slides only, text_only = reports only (default: {d.fusion})"
    )
    p.add_argument("--reports", help="folder of <case_id>.txt reports (else the manifest's report column)")
    p.add_argument("--report_embeddings", help=".npz with case_ids and embeddings, instead of embedding reports")
    p.add_argument("--text_model", help=f"MUSK architecture that embeds reports (default: {d.text_model})")
    p.add_argument(
        "--text_weights", help=f"its weights; '{NO_WEIGHTS}' = random, tests only (default: {d.text_weights})"
    )
    p.add_argument("--tokenizer", help=TOKENIZER_HELP)
    p.add_argument("--cache_dir", help="Hugging Face cache directory")
    p.add_argument("--classes", help="comma-separated class names in label order (default: the labels, sorted)")
    _add_survival_options(p, d)
    p.add_argument(
        "--select", choices=SELECTIONS, help=f"which epoch is kept, by the validation cases (default: {d.select})"
    )
    p.add_argument("--folds", type=int, help=f"default: {d.folds}")
    p.add_argument(
        "--val_fraction", type=float, help=f"of each training fold, for early stopping ({_by_task('val_fraction')})"
    )
    p.add_argument("--epochs", type=int, help="default: 40; a model that starts as the baseline (survival), 20")
    p.add_argument("--patience", type=int, help=f"early stopping, 0 = off (default: {d.patience})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=_by_task("optimizer"))
    p.add_argument("--lr", type=float, help=_by_task("lr"))
    p.add_argument("--weight_decay", type=float, help=f"default: {d.weight_decay}")
    p.add_argument("--hidden", type=int, help=f"default: {d.hidden}")
    p.add_argument("--dropout", type=float, help=f"default: {d.dropout}")
    p.add_argument("--balance", choices=BALANCING, help=f"class balancing (default: {d.balance})")
    p.add_argument("--no_cache_bags", dest="cache_bags", action="store_false", help="re-read bags every epoch")
    p.add_argument(
        "--no_standardise",
        dest="standardise",
        action="store_false",
        help="feed patch features as they are (default: standardised per feature with the training cases' values)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs in an --output_dir that holds files no run of ours recorded (others are left alone)",
    )
    _add_runtime(p, d.batch_size)
    p.set_defaults(run=run_train)


def _add_apply(commands, name: str, help_text: str, run) -> None:
    p = commands.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
    p.add_argument("--model_dir", required=True, help="a `musk mil train` output folder (fold models averaged) or fold")
    p.add_argument(
        "--manifest", required=True, help="CSV with slide_id, case_id" + (" and targets" if name == "eval" else "")
    )
    p.add_argument("--features_dir", help="folder of <slide_id>.h5 feature files")
    p.add_argument("--output_dir", "-o", required=True, help="where predictions.csv (and metrics.json) go")
    p.add_argument("--reports", help="folder of <case_id>.txt reports (else the manifest's report column)")
    p.add_argument("--report_embeddings", help=".npz with case_ids and embeddings")
    p.add_argument("--tokenizer", help=TOKENIZER_HELP)
    p.add_argument(
        "--text_weights",
        help=f"where the report encoder's weights are: '{PUBLISHED}', a hub id, a file, or '{NO_WEIGHTS}' "
        "(default: as in training)",
    )
    p.add_argument("--device", default="auto", help="default: %(default)s")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=_PRECISION_HELP)
    p.add_argument("--batch_size", type=int, default=8, help="default: %(default)s")
    p.add_argument("--num_workers", type=int, default=0, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.set_defaults(run=run)


def _add_heatmap(commands) -> None:
    p = commands.add_parser(
        "heatmap", help="attention of trained models over slides", description="Attention heatmaps."
    )
    p.add_argument("--model_dir", required=True, help="a `musk mil train` output folder or one fold folder")
    p.add_argument("--features", nargs="+", required=True, help="feature h5 file(s) of the slides")
    p.add_argument("--slides", nargs="+", help="the slide files, in the same order, to draw on their thumbnails")
    p.add_argument("--output_dir", "-o", required=True, help="where <name>_attention.h5 (and .png) go")
    p.add_argument("--thumbnail_size", type=int, default=2048, help="longest side in pixels (default: %(default)s)")
    p.add_argument("--device", default="auto", help="default: %(default)s")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=_PRECISION_HELP)
    p.set_defaults(run=run_heatmap)


def run_train(args: argparse.Namespace) -> int:
    from ..mil.train import train_config, train_mil

    given = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    result = train_mil(train_config(getattr(args, "config", None), **given, progress=show_progress()))
    print(json.dumps({"output_dir": str(result.output_dir), **result.summary(), "logrank_p": result.logrank_p}))
    return 0


def _apply_config(args: argparse.Namespace) -> MILApplyConfig:
    from ..mil.predict import MILApplyConfig
    from ..settings import setting_names

    return MILApplyConfig(**{name: getattr(args, name) for name in setting_names(MILApplyConfig)})


def run_eval(args: argparse.Namespace) -> int:
    from ..mil.predict import evaluate_to_folder

    result = evaluate_to_folder(_apply_config(args))
    print(json.dumps(result.metrics))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..mil.predict import predict_to_folder

    result = predict_to_folder(_apply_config(args))
    print(json.dumps({"output_dir": args.output_dir, "cases": len(result.cohort)}))
    return 0


def run_heatmap(args: argparse.Namespace) -> int:
    from ..mil.heatmap import draw_heatmaps

    written = draw_heatmaps(
        args.model_dir, args.features, args.output_dir, args.slides, args.thumbnail_size, args.device, args.precision
    )
    print(json.dumps({"written": [str(path) for path in written]}))
    return 0
