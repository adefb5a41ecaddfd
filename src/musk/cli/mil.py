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
import logging
from dataclasses import fields
from pathlib import Path

from ..files import write_json
from ..provenance import provenance
from ..runtime import DTYPES, resolve_device, seed_everything
from .common import run_config, show_progress

logger = logging.getLogger(__name__)

_NO_WEIGHTS = ("none", "random")


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
    group.add_argument("--precision", choices=sorted(DTYPES), help="autocast on GPUs (default: fp32)")
    group.add_argument("--batch_size", type=int, help=f"cases per step (default: {batch_size})")
    group.add_argument("--num_workers", type=int, help="bag loading processes (default: 0)")
    group.add_argument("--seed", type=int, help="default: 0")


def _add_train(commands) -> None:
    from ..mil.fit import BALANCING, SELECTIONS
    from ..mil.losses import SURVIVAL_LOSSES
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
    p.add_argument("--text_weights", help=f"its weights; 'none' = random, tests only (default: {d.text_weights})")
    p.add_argument("--tokenizer", help="tokenizer.spm (default: from the hub)")
    p.add_argument("--cache_dir", help="Hugging Face cache directory")
    p.add_argument("--classes", help="comma-separated class names in label order (default: the labels, sorted)")
    p.add_argument("--survival_loss", choices=SURVIVAL_LOSSES, help=f"default: {d.survival_loss}")
    p.add_argument("--n_bins", type=int, help=f"time bins of the nll loss (default: {d.n_bins})")
    p.add_argument(
        "--uncensored_weight", type=float, help=f"nll loss: censored cases count 1 - this (default: {d.uncensored_weight})"
    )
    p.add_argument(
        "--select", choices=SELECTIONS, help=f"which epoch is kept, by the validation cases (default: {d.select})"
    )
    p.add_argument("--folds", type=int, help=f"default: {d.folds}")
    p.add_argument(
        "--val_fraction", type=float, help=f"of each training fold, for early stopping (default: {d.val_fraction})"
    )
    p.add_argument("--epochs", type=int, help=f"default: {d.epochs}")
    p.add_argument("--patience", type=int, help=f"early stopping, 0 = off (default: {d.patience})")
    p.add_argument("--lr", type=float, help=f"default: {d.lr}")
    p.add_argument("--weight_decay", type=float, help=f"default: {d.weight_decay}")
    p.add_argument("--hidden", type=int, help=f"default: {d.hidden}")
    p.add_argument("--dropout", type=float, help=f"default: {d.dropout}")
    p.add_argument("--balance", choices=BALANCING, help=f"class balancing (default: {d.balance})")
    p.add_argument("--no_cache_bags", dest="cache_bags", action="store_false", help="re-read bags every epoch")
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
    p.add_argument("--tokenizer", help="tokenizer.spm (default: from the hub)")
    p.add_argument("--text_weights", help="where the report encoder's weights are (default: as in training)")
    p.add_argument("--device", default="auto", help="default: %(default)s")
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
    p.set_defaults(run=run_heatmap)


def _load_yaml(path: str) -> dict:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file}")
    values = yaml.safe_load(file.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{file}: a config is a mapping of option names to values")
    return values


def run_train(args: argparse.Namespace) -> int:
    from ..mil.train import MILTrainConfig, train_mil

    given = {k: v for k, v in vars(args).items() if k not in ("run", "command", "mil_command", "verbose", "config")}
    values = _load_yaml(args.config) if getattr(args, "config", None) else {}
    known = {f.name for f in fields(MILTrainConfig)} - {"progress"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{args.config}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values.update(given)
    if isinstance(values.get("classes"), str):
        values["classes"] = [c.strip() for c in values["classes"].split(",") if c.strip()]
    if str(values.get("text_weights")).lower() in _NO_WEIGHTS:
        values["text_weights"] = None
    result = train_mil(MILTrainConfig(**values, progress=show_progress()))
    print(json.dumps({"output_dir": str(result.output_dir), **result.summary(), "logrank_p": result.logrank_p}))
    return 0


def _check_output_dir(output_dir: str, model_dir: str) -> None:
    """Refuse to write predictions into a training run or model folder: they would replace the run's own."""
    out = Path(output_dir)
    holds = [n for n in ("results.json", "model.safetensors") if (out / n).is_file()] + [
        f"{p.parent.name}/" for p in sorted(out.glob("fold_*/model.safetensors"))[:1]
    ]
    if holds or (out.is_dir() and out.resolve() == Path(model_dir).resolve()):
        raise ValueError(
            f"--output_dir {out} holds trained models or a training run ({', '.join(holds) or 'the --model_dir'}); "
            f"its predictions.csv and provenance.json would be replaced: choose another folder, e.g. {out / 'eval'}"
        )


def _apply(args: argparse.Namespace, evaluate: bool):
    from ..mil.predict import evaluate_mil, predict_mil

    _check_output_dir(args.output_dir, args.model_dir)
    seed_everything(args.seed)
    function = evaluate_mil if evaluate else predict_mil
    return function(
        args.model_dir,
        args.manifest,
        args.features_dir,
        reports=args.reports,
        report_embeddings=args.report_embeddings,
        tokenizer=args.tokenizer,
        text_weights=args.text_weights,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )


def _write_outputs(args: argparse.Namespace, result) -> None:
    from ..mil.train import prediction_rows, write_predictions_csv

    output_dir = Path(args.output_dir)
    rows = prediction_rows(result.cohort, range(len(result.cohort)), result.predictions, None)
    if not result.metrics:
        for row in rows:
            row.pop("label", None)
            row.pop("time", None)
            row.pop("event", None)
    write_predictions_csv(output_dir / "predictions.csv", rows)
    record = provenance(run_config(args))
    record["models"] = [str(m.path) for m in result.models]
    if result.metrics is not None:
        write_json(output_dir / "metrics.json", result.metrics)
        record["metrics"] = result.metrics
    write_json(output_dir / "provenance.json", record)


def run_eval(args: argparse.Namespace) -> int:
    result = _apply(args, evaluate=True)
    _write_outputs(args, result)
    print(json.dumps(result.metrics))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    result = _apply(args, evaluate=False)
    _write_outputs(args, result)
    print(json.dumps({"output_dir": args.output_dir, "cases": len(result.cohort)}))
    return 0


def run_heatmap(args: argparse.Namespace) -> int:
    from ..files import atomic_path
    from ..mil.heatmap import attention_map, draw_attention
    from ..mil.saved import load_mil_models
    from ..wsi.h5 import read_patch_file

    if args.slides and len(args.slides) != len(args.features):
        raise ValueError(f"{len(args.slides)} slides for {len(args.features)} feature files: give one slide per file")
    names: dict[str, str] = {}
    for features in args.features:
        earlier = names.setdefault(Path(features).stem, features)
        if earlier != features:
            raise ValueError(
                f"{earlier} and {features} share the name {Path(features).stem!r}, so their heatmaps would overwrite "
                "each other in one --output_dir: run them separately with different output folders"
            )
    models = load_mil_models(args.model_dir, resolve_device(args.device))
    output_dir = Path(args.output_dir)
    written = []
    for i, features in enumerate(args.features):
        name = Path(features).stem
        h5_path = attention_map(models, features, output_dir / f"{name}_attention.h5")
        written.append(str(h5_path))
        if args.slides:
            from ..wsi.readers import open_slide

            attention = read_patch_file(h5_path, arrays=("attention",))
            slide = open_slide(args.slides[i])
            size = int(attention.attrs.get("patch_size_level0", attention.attrs.get("patch_size", 0)))
            if size <= 0:
                raise ValueError(f"{features} has no patch_size_level0 attribute: cannot place its patches")
            image = draw_attention(
                slide.thumbnail(args.thumbnail_size),
                attention.coords,
                attention.arrays["attention"],
                size,
                slide.dimensions,
            )
            png = output_dir / f"{name}_attention.png"
            with atomic_path(png) as tmp:
                image.save(tmp, format="PNG")
            written.append(str(png))
    print(json.dumps({"written": written}))
    return 0
