"""Options shared by the subcommands, and turning them into a loaded model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..files import check_file_target
from ..loaded import LoadedModel, load
from ..models import DEFAULT_MODEL, NO_WEIGHTS, PUBLISHED
from ..models.registry import published_source
from ..models.weights import weights_option
from ..runtime import PRECISIONS, seed_everything

WEIGHTS_HELP = (
    f"'{PUBLISHED}' (the architecture's published weights: {published_source(DEFAULT_MODEL)} for {DEFAULT_MODEL}), "
    f"a hub id, a local .safetensors/.pth/.bin file or folder, or '{NO_WEIGHTS}' (random initialisation)"
)
TOKENIZER_HELP = "tokenizer.spm (default: beside local weights, else the hub's)"


def add_model_args(parser: argparse.ArgumentParser, weights_help: str = WEIGHTS_HELP, tokenizer: bool = False) -> None:
    """``--model``, ``--weights`` (alias ``--pretrained_model``), ``--cache_dir`` (and ``--tokenizer``)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL, help="registered architecture (default: %(default)s)")
    group.add_argument(
        "--weights",
        "--pretrained_model",
        dest="weights",
        default=PUBLISHED,
        help=f"{weights_help} (default: %(default)s)",
    )
    if tokenizer:
        group.add_argument("--tokenizer", default=None, help=TOKENIZER_HELP)
    group.add_argument("--cache_dir", default=None, help="Hugging Face cache directory (default: the standard one)")


def add_runtime_args(parser: argparse.ArgumentParser, batch_size: int = 32, streams: bool = False) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ... (default: %(default)s)")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32", help="default: %(default)s")
    group.add_argument("--batch_size", type=int, default=batch_size, help="default: %(default)s")
    group.add_argument("--num_workers", type=int, default=0, help="image loading processes (default: %(default)s)")
    if streams:
        help_text = "concurrent model calls per batch (default: one per thread on CPU, 1 on a GPU)"
        group.add_argument("--streams", type=positive_int, default=None, help=help_text)
    group.add_argument("--seed", type=int, default=0, help="default: %(default)s")


def loaded_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model the options name (``--weights none``: random weights seeded by ``--seed``)."""
    seed_everything(args.seed)
    return load(
        args.model,
        weights=weights_option(args.weights),
        device=args.device,
        precision=args.precision,
        tokenizer=getattr(args, "tokenizer", None),
        cache_dir=args.cache_dir,
        seed=args.seed,
    )


def output_path(name: str, suffixes: tuple[str, ...] = ()) -> Path:
    """The output file ``name``, checked before any work is done: not a folder, not under a file, in a folder
    that can be written, with one of ``suffixes`` when given, and not a ``.json`` (that name is taken by the
    provenance record written beside it)."""
    path = Path(name)
    if path.suffix == ".json":
        raise ValueError(f"output {name!r}: .json names the provenance record written beside it; use another suffix")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"output {name!r}: this command writes {' or '.join(suffixes)} files; name it so")
    check_file_target(path, "output")
    return path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def run_config(args: argparse.Namespace) -> dict:
    """The resolved options of a command, for the provenance record (the handler function left out)."""
    return {k: v for k, v in vars(args).items() if k != "run"}


def show_progress() -> bool:
    """Progress bars only when a person is watching."""
    return sys.stderr.isatty()
