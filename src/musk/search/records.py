"""What an index holds per slide and what a query returns: slide records, patch hits, slide hits, errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["HIT_COLUMNS", "SLIDE_HIT_COLUMNS", "Hit", "SearchError", "SlideHit", "SlideRecord", "UnknownSlideError"]

#: The columns of a patch-hit table (``--output``); x, y: level-0 top-left corner, patch_size: level-0 pixels.
HIT_COLUMNS = ("rank", "slide", "x", "y", "patch_size", "score", "case", "label")
#: The columns of a slide-hit table (per-class scores and the prediction follow when several prompts are given).
SLIDE_HIT_COLUMNS = ("rank", "slide", "score", "case", "label")


class SearchError(ValueError):
    """A query or an index that cannot be used as asked; the message says what to do."""


class UnknownSlideError(SearchError):
    """A slide name the index does not hold."""


@dataclass(frozen=True)
class SlideRecord:
    """One indexed slide.

    ``patches`` vectors are stored for it; ``patch_size_level0`` is the side of each patch in level-0 pixels,
    ``magnification`` the one the patches were taken at. ``path`` is the slide file as it was when indexed
    (None when unknown), ``features`` the h5 file the vectors came from. ``key`` and ``start`` place its vectors
    in the index (a re-added slide gets a new key); ``patch_size``, ``level``, ``read_size`` and ``mpp`` say how
    its patches were read (for contact sheets); ``source`` identifies the h5 file (size, modification time).
    """

    name: str
    path: str | None
    case: str | None
    label: str | None
    patches: int
    patch_size_level0: int
    magnification: float | None
    key: int = -1
    start: int = 0
    features: str | None = None
    feature_kind: str | None = None
    patch_size: int | None = None
    level: int | None = None
    read_size: int | None = None
    mpp: float | None = None
    source: dict = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        """The case the slide belongs to; a slide without one is its own case."""
        return self.case if self.case else self.name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SlideRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Hit:
    """One patch found by a query: its slide, level-0 top-left corner and size, cosine score, case and label."""

    rank: int
    slide: str
    x: int
    y: int
    patch_size: int
    score: float
    case: str | None
    label: str | None

    def row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SlideHit:
    """One slide found by a query. With several class prompts, ``scores`` holds each class's score and
    ``prediction`` the best class (slide-level zero-shot)."""

    rank: int
    slide: str
    score: float
    case: str | None
    label: str | None
    scores: dict[str, float] | None = None
    prediction: str | None = None

    def row(self) -> dict:
        row = {k: getattr(self, k) for k in SLIDE_HIT_COLUMNS}
        if self.scores is not None:
            row |= {f"score_{name}": value for name, value in self.scores.items()}
            row["prediction"] = self.prediction
        return row
