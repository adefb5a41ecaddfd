"""Answer normalisation, closed (yes/no) versus open questions, and the answer vocabulary."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CLOSED_ANSWERS", "AnswerVocab", "is_closed", "normalize_answer", "question_type"]

#: Answers of closed questions (PathVQA's yes/no questions).
CLOSED_ANSWERS = frozenset({"yes", "no"})
VOCAB_FILENAME = "answers.json"

_SPACES = re.compile(r"\s+")
_EDGE_PUNCTUATION = ".,;:!?\"'`"
_WH_WORDS = ("what", "where", "which", "how", "who", "whom", "whose", "when", "why")


def normalize_answer(text: object) -> str:
    """The comparable form of an answer: Unicode NFKC, lower case, single spaces, no edge punctuation.

    Articles and inner punctuation are kept: in pathology answers ("t-cell", "a1 antitrypsin") they matter.
    """
    text = unicodedata.normalize("NFKC", str(text)).lower()
    return _SPACES.sub(" ", text).strip().strip(_EDGE_PUNCTUATION).strip()


def is_closed(answer: str) -> bool:
    """Whether an answer belongs to a closed (yes/no) question."""
    return normalize_answer(answer) in CLOSED_ANSWERS


def question_type(question: str, answer: str) -> str:
    """A question's type when the data gives none: ``yes/no`` for closed ones, else its wh-word or ``other``."""
    if is_closed(answer):
        return "yes/no"
    words = normalize_answer(question).split()
    first = words[0] if words else ""
    return first if first in _WH_WORDS else "other"


@dataclass
class AnswerVocab:
    """The answers a VQA model chooses among, most frequent first; index ``i`` is classifier output ``i``."""

    answers: list[str]
    counts: list[int] = field(default_factory=list)
    min_count: int = 1

    def __post_init__(self) -> None:
        if not self.answers:
            raise ValueError("the answer vocabulary is empty: no training answer reached the minimum count")
        if len(set(self.answers)) != len(self.answers):
            raise ValueError("the answer vocabulary has duplicate answers")
        if self.counts and len(self.counts) != len(self.answers):
            raise ValueError(f"{len(self.counts)} counts for {len(self.answers)} answers")
        self._index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def build(cls, answers: Iterable[str], min_count: int = 1) -> AnswerVocab:
        """Normalised answers seen at least ``min_count`` times, by count (descending) then alphabetically."""
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        counts = Counter(normalize_answer(a) for a in answers)
        counts.pop("", None)
        kept = sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))
        return cls(kept, [counts[a] for a in kept], min_count)

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return normalize_answer(answer) in self._index

    def index(self, answer: str) -> int:
        """Class index of an answer (normalised first); -1 when the vocabulary lacks it."""
        return self._index.get(normalize_answer(answer), -1)

    def answer(self, index: int) -> str:
        return self.answers[index]

    def to_dict(self) -> dict:
        return {"answers": self.answers, "counts": self.counts, "min_count": self.min_count}

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (``answers``, ``counts``, ``min_count``)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnswerVocab:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"answer vocabulary not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(list(data["answers"]), list(data.get("counts", [])), int(data.get("min_count", 1)))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not an answer vocabulary ({type(e).__name__}: {e})") from e
