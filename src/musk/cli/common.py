"""Options shared by the subcommands, and turning them into a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..files import check_file_target
from ..models import MUSK, create_model
from ..models.factory import DEFAULT_MODEL
from ..runtime import DTYPES, resolve_device, seed_everything

DEFAULT_WEIGHTS = "hf_hub:xiangjx/musk"


WEIGHTS_HELP = "hub id, local .safetensors/.pth/.bin file or directory"


def add_model_args(parser: argparse.ArgumentParser, weights_help: str = WEIGHTS_HELP) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL, help="registered architecture (default: %(default)s)")
    group.add_argument(
        "--weights",
        "--pretrained_model",
        dest="weights",
        default=DEFAULT_WEIGHTS,
        help=f"{weights_help} (default: %(default)s)",
    )
    group.add_argument("--cache_dir", default=None, help="Hugging Face cache directory (default: the standard one)")


def add_runtime_args(parser: argparse.ArgumentParser, batch_size: int = 32, streams: bool = False) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ... (default: %(default)s)")
    group.add_argument("--precision", choices=sorted(DTYPES), default="fp32", help="default: %(default)s")
    group.add_argument("--batch_size", type=int, default=batch_size, help="default: %(default)s")
    group.add_argument("--num_workers", type=int, default=0, help="image loading processes (default: %(default)s)")
    if streams:
        help_text = "concurrent model calls per batch (default: one per thread on CPU, 1 on a GPU)"
        group.add_argument("--streams", type=positive_int, default=None, help=help_text)
    group.add_argument("--seed", type=int, default=0, help="default: %(default)s")


def output_path(name: str) -> Path:
    """The output file ``name``, checked before any work is done: not a folder, not under a file, and not a
    ``.json`` (that name is taken by the provenance record written beside it)."""
    path = Path(name)
    check_file_target(path, "output")
    if path.suffix == ".json":
        raise ValueError(f"output {name!r}: .json names the provenance record written beside it; use another suffix")
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


def model_from_args(args: argparse.Namespace) -> MUSK:
    seed_everything(args.seed)
    return create_model(
        args.model,
        pretrained=args.weights,
        device=resolve_device(args.device),
        dtype=DTYPES[args.precision],
        cache_dir=args.cache_dir,
    )


def show_progress() -> bool:
    """Progress bars only when a person is watching."""
    return sys.stderr.isatty()
