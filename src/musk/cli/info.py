"""``musk info``: versions, devices, cache locations, and whether the weights can be had."""

from __future__ import annotations

import argparse
import platform

import timm
import torch

from .. import __version__
from ..models import DEFAULT_MODEL, PUBLISHED
from ..models.registry import published_source
from ..models.weights import WEIGHTS_FILE, WeightsUnavailableError, parse_hub_id, resolve_weights


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="show versions, devices, caches and weights status", description=__doc__)
    p.add_argument(
        "--weights",
        default=PUBLISHED,
        help=f"'{PUBLISHED}' ({published_source(DEFAULT_MODEL)}), a hub id, a local file or folder to check "
        "(default: %(default)s)",
    )
    p.add_argument("--offline", action="store_true", help="only look in the cache, do not ask the hub")
    p.add_argument("--cache_dir", default=None, help="Hugging Face cache directory (default: the standard one)")
    p.set_defaults(run=run)


def devices() -> list[str]:
    found = ["cpu"]
    found += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def weights_status(source: str, offline: bool, cache_dir: str | None = None) -> str:
    """Where the weights are, or why they cannot be had, in one line."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    repo_id = parse_hub_id(source)
    if repo_id is None:
        try:
            path = resolve_weights(source)
        except WeightsUnavailableError as e:
            return f"not usable: {e}"
        return f"local file {path}" if path.suffix != ".safetensors" else _safetensors_status(path)
    cached = try_to_load_from_cache(repo_id, WEIGHTS_FILE, cache_dir=cache_dir)
    if isinstance(cached, str):
        return f"in the cache: {cached}"
    if offline or constants.HF_HUB_OFFLINE:
        return "not in the cache (offline: the hub was not asked)"
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, WEIGHTS_FILE), timeout=10)
    except Exception as e:  # noqa: BLE001 - any failure here is the answer to report
        return f"not in the cache and not reachable: {type(e).__name__}: {str(e).splitlines()[0]}"
    return "not in the cache; downloadable from the hub"


def _safetensors_status(path) -> str:
    """A safetensors file's tensor count from its header (cheap to read), or why it cannot be read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f"local file {path} ({len(f.keys())} tensors)"
    except (SafetensorError, OSError) as e:
        return f"not usable: {path} is not a readable safetensors file ({e})"


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import constants

    weights = published_source(DEFAULT_MODEL) if args.weights == PUBLISHED else args.weights
    lines = {
        "musk-pathology": __version__,
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)",
        "timm": timm.__version__,
        "devices": ", ".join(devices()),
        "hf cache": args.cache_dir or constants.HF_HUB_CACHE,
        "hf token": "set" if _has_token() else "not set",
        f"weights {weights}": weights_status(weights, args.offline, args.cache_dir),
    }
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None
