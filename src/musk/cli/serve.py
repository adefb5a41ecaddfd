"""``musk serve``: MUSK and the archive search as an HTTP service, with a page to search and browse slides."""

from __future__ import annotations

import argparse
import os

from ..runtime import PRECISIONS
from ..settings import build
from .common import add_model_args, positive_float, positive_int

API_KEY_VARIABLE = "MUSK_API_KEY"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve embeddings, zero-shot and search over HTTP", description=__doc__)
    p.add_argument("--index", default=None, help="a search index folder (musk search build); without it no search")
    add_model_args(p, tokenizer=True)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ... (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (--weights none)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)")
    net.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    net.add_argument("--api_key", default=None, help=f"required bearer key (default: ${API_KEY_VARIABLE}; prefer it)")
    net.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    cors_help = "a web origin allowed to call the API from its pages (repeatable; default: none)"
    net.add_argument("--cors_origin", dest="cors_origins", action="append", default=[], help=cors_help)
    limits = p.add_argument_group("batching and limits")
    limits.add_argument(
        "--max_batch", type=positive_int, default=32, help="items per model batch (default: %(default)s)"
    )
    limits.add_argument(
        "--max_wait_ms", type=float, default=10.0, help="wait for a batch to fill (default: %(default)s)"
    )
    limits.add_argument(
        "--max_queue", type=positive_int, default=256, help="queued items before 429 (default: %(default)s)"
    )
    limits.add_argument(
        "--max_body_mb", type=positive_float, default=20.0, help="request body limit (default: %(default)s)"
    )
    limits.add_argument(
        "--max_image_pixels", type=positive_int, default=1 << 25, help="per image (default: %(default)s)"
    )
    limits.add_argument("--timeout_s", type=positive_float, default=60.0, help="per request (default: %(default)s)")
    limits.add_argument("--streams", type=positive_int, default=None, help="concurrent model calls per batch on CPU")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import ServeSettings, serve

    values = {k: v for k, v in vars(args).items() if k not in ("run", "command", "verbose")}
    values["api_key"] = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    serve(build(ServeSettings, values, source="musk serve"))
    return 0
