"""Searching a slide archive by text, by image and by case, in MUSK's shared image-text space.

    from musk.search import build_index, open_index
    build_index(["job/"], "index/", lm, cases="cases.csv")          # what `musk index build` does
    with open_index("index/") as index:
        hits = index.search_text(lm, "mitotic figure", k=20, per_slide=2)
        slides = index.rank_slides(lm, ["tumor", "normal tissue"])   # slide-level zero-shot
        similar = index.similar_slides("case-12-A", k=5)             # case retrieval

``lm`` is a loaded model (``musk.load``); the index refuses one with other weights than those it was built
with. Needs the ``[search]`` extra (faiss-cpu; pymilvus and milvus-lite for the Milvus backend). See
docs/search.md.
"""

from .backend import BACKENDS, KINDS
from .build import add_to_index, build_index, check_model
from .cases import read_cases
from .evaluate import evaluate_index
from .metrics import acc_at_k, majority_vote, mmv_at_k, recall_at_k
from .mil import mil_slide_embeddings
from .query import SearchIndex, open_index
from .records import HIT_COLUMNS, SLIDE_HIT_COLUMNS, Hit, SearchError, SlideHit, SlideRecord, UnknownSlideError
from .results import write_results
from .sheet import contact_sheet, read_patch
from .slides import case_vote, rank_slides, similar_slides

__all__ = [
    "BACKENDS",
    "HIT_COLUMNS",
    "KINDS",
    "SLIDE_HIT_COLUMNS",
    "Hit",
    "SearchError",
    "SearchIndex",
    "SlideHit",
    "SlideRecord",
    "UnknownSlideError",
    "acc_at_k",
    "add_to_index",
    "build_index",
    "case_vote",
    "check_model",
    "contact_sheet",
    "evaluate_index",
    "majority_vote",
    "mil_slide_embeddings",
    "mmv_at_k",
    "open_index",
    "rank_slides",
    "read_cases",
    "read_patch",
    "recall_at_k",
    "similar_slides",
    "write_results",
]
