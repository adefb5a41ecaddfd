"""``musk search``: query a slide index by text, by image or by slide; evaluate retrieval on a labelled cohort.

musk search index/ --text "mitotic figure" --k 20 --per_slide 2 --sheet hits.png --output hits.csv
musk search index/ --image patch.png --filter label=tumor --exclude_case C-017
musk search index/ --text "tumor" --slides --top_k 10                       # slides ranked by a text
musk search index/ --text "lung adenocarcinoma" "lung squamous cell carcinoma" --slides   # zero-shot table
musk search index/ --slide C-017-A --k 5                                    # case retrieval, majority vote
musk search index/ --slide C-017-A --mil mil_run/                           # ... by a trained MIL model's view
musk search eval --index index/ --manifest cases.csv                        # Acc@1/3/5, mMV@5, recall@10

--model and --weights default to those the index was built with. Results go to stdout as CSV, and to --output
(CSV, or JSON Lines for a .jsonl name; a provenance .json beside it).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ..files import check_file_target, write_json
from ..provenance import provenance
from .common import WEIGHTS_HELP, add_model_args, add_runtime_args, output_path, positive_int, run_config
from .index import load_model


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="search a slide index by text, image or slide; evaluate retrieval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="INDEX", help="the index folder (or 'eval': evaluate --index on --manifest)")
    query = p.add_argument_group("query (one of)")
    query.add_argument("--text", nargs="+", default=None, help="words to search for (several with --slides)")
    query.add_argument("--image", default=None, help="an image file (a patch, or any image)")
    query.add_argument("--slide", default=None, help="an indexed slide: find the nearest slides (case retrieval)")
    g = p.add_argument_group("results")
    g.add_argument("--k", type=positive_int, default=20, help="hits to return (default: %(default)s)")
    g.add_argument("--per_slide", type=positive_int, default=None, help="at most this many patches per slide")
    g.add_argument("--templates", nargs="+", default=None, help="prompt templates with {} for the text (ensemble)")
    g.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only slides with this label=... or case=... (repeat for several values)",
    )
    g.add_argument("--exclude_case", default=None, help="leave out the slides of this case")
    g.add_argument("--slides", action="store_true", help="rank slides by the mean of their top-k patch scores")
    g.add_argument("--top_k", type=positive_int, default=10, help="patches pooled per slide (default: %(default)s)")
    g.add_argument("--include_case", action="store_true", help="--slide: also return the query's own case")
    g.add_argument(
        "--mil", default=None, help="--slide: compare slides by this trained musk mil model's representation"
    )
    g.add_argument("--output", "-o", default=None, help="CSV (or .jsonl) to write")
    g.add_argument("--sheet", default=None, help="PNG contact sheet of the patch hits")
    e = p.add_argument_group("eval")
    e.add_argument("--index", default=None, help="eval: the index folder")
    e.add_argument("--manifest", default=None, help="eval: CSV with slide, case, label")
    e.add_argument("--queries", type=positive_int, default=200, help="eval: sampled patch queries (default: 200)")
    e.add_argument("--recall_k", type=positive_int, default=10, help="eval: recall@k of the index (default: 10)")
    add_model_args(p, weights_help=WEIGHTS_HELP + "; default: the index's", tokenizer=True)
    add_runtime_args(p)
    p.set_defaults(run=run, model=None, weights=None)


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in ("label", "case") or not value.strip():
            raise ValueError(f"--filter {item!r}: write label=VALUE or case=VALUE")
        filters.setdefault(key.strip(), []).append(value.strip())
    return filters


def _check(args: argparse.Namespace) -> None:
    """Usage errors, found before the index or the model is opened."""
    given = [name for name in ("text", "image", "slide") if getattr(args, name) is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of --text, --image and --slide")
    if args.mil is not None and args.slide is None:
        raise ValueError("--mil compares slides: use it with --slide")
    if args.slides and args.text is None:
        raise ValueError("--slides ranks slides against --text")
    if args.text is not None and len(args.text) > 1 and not args.slides:
        raise ValueError("several --text prompts are class prompts for --slides; search patches with one text")
    if args.sheet is not None:
        if args.slide is not None or args.slides:
            raise ValueError("--sheet draws patch hits: use it with --text or --image (without --slides)")
        check_file_target(Path(args.sheet), "sheet")
    if args.output is not None:
        output_path(args.output)
    if args.image is not None:
        from ..images import load_image

        load_image(args.image)  # an unreadable image fails here, before the model loads


def run(args: argparse.Namespace) -> int:
    if args.target == "eval":
        return run_eval(args)
    from ..search import open_index

    _check(args)
    filters = parse_filters(args.filter)
    with open_index(args.target) as index:
        if args.slide is not None:
            rows, columns = _case_retrieval(index, args)
        else:
            lm = load_model(args, index.manifest)
            rows, columns = _model_query(index, lm, args, filters)
        _write(args, index, rows, columns)
    return 0


def _case_retrieval(index, args) -> tuple[list, tuple]:
    from ..search import SLIDE_HIT_COLUMNS, case_vote

    embeddings = None
    if args.mil is not None:
        from ..runtime import resolve_device
        from ..search.mil import mil_slide_embeddings

        embeddings = mil_slide_embeddings(index, args.mil, resolve_device(args.device))
    hits = index.similar_slides(args.slide, k=args.k, exclude_case=not args.include_case, embeddings=embeddings)
    print(f"majority vote of the top {len(hits)}: {case_vote(hits)}", file=sys.stderr)
    return hits, SLIDE_HIT_COLUMNS


def _model_query(index, lm, args, filters) -> tuple[list, tuple]:
    from ..search import HIT_COLUMNS, SLIDE_HIT_COLUMNS

    if args.slides:
        hits = index.rank_slides(
            lm,
            args.text,
            top_k=args.top_k,
            k=args.k if len(args.text) == 1 else None,
            templates=args.templates,
            filters=filters,
            exclude_case=args.exclude_case,
        )
        columns = tuple(hits[0].row()) if hits else SLIDE_HIT_COLUMNS
        return hits, columns
    common = {"k": args.k, "per_slide": args.per_slide, "filters": filters, "exclude_case": args.exclude_case}
    if args.text is not None:
        hits = index.search_text(lm, args.text[0], templates=args.templates, **common)
    else:
        hits = index.search_image(lm, args.image, **common)
    return hits, HIT_COLUMNS


def _write(args, index, hits: list, columns: tuple) -> None:
    from ..search import contact_sheet, write_results

    rows = [hit.row() for hit in hits]
    writer = csv.writer(sys.stdout)
    writer.writerow(columns)
    writer.writerows([[row.get(c, "") for c in columns] for row in rows])
    if args.sheet is not None:
        missing = contact_sheet(index, hits, args.sheet)
        if missing:
            print(
                f"sheet {args.sheet}: the files of {len(missing)} slide(s) are missing: {', '.join(missing)}",
                file=sys.stderr,
            )
    if args.output is not None:
        output = write_results(args.output, rows, columns)
        write_json(output.with_suffix(".json"), provenance({**run_config(args), "index": index.info()}))


def run_eval(args: argparse.Namespace) -> int:
    from ..search import evaluate_index, open_index

    if args.index is None or args.manifest is None:
        raise ValueError("musk search eval needs --index INDEX and --manifest cases.csv")
    if args.output is not None:
        check_file_target(Path(args.output), "output")
    with open_index(args.index) as index:
        report = evaluate_index(index, args.manifest, args.queries, args.recall_k, args.seed)
    print(json.dumps(report, indent=2))
    if args.output is not None:
        write_json(args.output, {**report, "provenance": provenance(run_config(args))})
    return 0
