"""``musk index``: build a search index over whole-slide features, add slides to it, describe it.

musk index build --jobs job1/ job2/ --index archive_index/ --manifest cases.csv      # FAISS, kind chosen by size
musk index build --jobs features/*.h5 --index idx/ --backend milvus --uri http://milvus:19530
musk index add   --index archive_index/ --jobs new_job/                              # a re-added slide is replaced
musk index info  archive_index/

Inputs are `musk wsi` job directories, folders of h5 feature files or h5 files (CLAM/TRIDENT layout with the
attributes feature_kind, weights_sha256, patch_size_level0). A killed build resumes when run again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..models import NO_WEIGHTS, PUBLISHED
from .common import WEIGHTS_HELP, add_model_args, add_runtime_args, loaded_from_args, show_progress


def add_parser(subparsers) -> None:
    index = subparsers.add_parser(
        "index",
        help="build and extend a search index of slide features",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = index.add_subparsers(dest="index_command", required=True)
    for name, help_text in (("build", "index the slides of wsi jobs or h5 files"), ("add", "add slides to an index")):
        p = commands.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--jobs", nargs="+", required=True, help="musk wsi job directories, h5 folders or h5 files")
        p.add_argument("--index", required=True, help="the index folder")
        p.add_argument("--manifest", default=None, help="CSV with slide, case, label columns")
        if name == "build":
            p.add_argument("--backend", choices=("faiss", "milvus"), default="faiss", help="default: %(default)s")
            p.add_argument(
                "--kind",
                choices=("auto", "flat", "hnsw", "ivfpq"),
                default="auto",
                help="auto: exact up to 50k vectors, IVF-PQ (re-ranked) above (default: %(default)s)",
            )
            p.add_argument("--uri", default=None, help="Milvus server URI (default: Milvus Lite inside the index)")
            p.add_argument("--overwrite", action="store_true", help="build again over an existing index")
        add_model_args(
            p, weights_help=WEIGHTS_HELP + ("" if name == "build" else "; default: the index's"), tokenizer=True
        )
        add_runtime_args(p)
        if name == "add":
            p.set_defaults(model=None, weights=None)  # the index's
        p.set_defaults(run=run_build if name == "build" else run_add)
    p = commands.add_parser("info", help="what an index holds", description="what an index holds")
    p.add_argument("index", help="the index folder")
    p.set_defaults(run=run_info)


def weights_of(manifest) -> str:
    """Where the weights an index was built with are found again: random, a local file, or the hub."""
    fingerprint = manifest.fingerprint
    if fingerprint.get("random"):
        return NO_WEIGHTS
    if fingerprint.get("path") and Path(fingerprint["path"]).is_file():
        return fingerprint["path"]
    if fingerprint.get("repo_id"):
        return f"hf_hub:{fingerprint['repo_id']}"
    return PUBLISHED


def load_model(args: argparse.Namespace, manifest=None):
    """The loaded model of the command's options; ``--model``/``--weights`` default to the index's."""
    if manifest is not None:
        args.model = args.model or manifest.model
        args.weights = args.weights or weights_of(manifest)
    return loaded_from_args(args)


def run_build(args: argparse.Namespace) -> int:
    from ..search import build_index, open_index

    lm = load_model(args)
    build_index(
        args.jobs,
        args.index,
        lm,
        args.manifest,
        args.backend,
        args.kind,
        args.uri,
        args.overwrite,
        progress=show_progress(),
    )
    with open_index(args.index) as index:
        print(json.dumps(index.info(), indent=2))
    return 0


def run_add(args: argparse.Namespace) -> int:
    from ..search import add_to_index, open_index
    from ..search.layout import read_manifest

    lm = load_model(args, read_manifest(args.index))
    add_to_index(args.index, args.jobs, lm, args.manifest, progress=show_progress())
    with open_index(args.index) as index:
        print(json.dumps(index.info(), indent=2))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..search import open_index

    with open_index(args.index) as index:
        print(json.dumps(index.info(), indent=2))
    return 0
