"""A generated VQA set whose answers depend on the image and the question type, and checks of the generator.

Each 64 px image shows one red, green or blue circle, square or triangle on a grey, noisy background; each
image gets four questions: its colour and its shape (open), whether it is red and whether it is round
(closed). Red and circles are drawn half the time, so without the image the best any model can do is half
of every question type (always "red", "circle", "no").
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 60, 230)}
SHAPES = ("circle", "square", "triangle")
#: Red and circles half the time, so "is the shape red?" and "is the shape round?" are yes half the time.
WEIGHTS = (0.5, 0.25, 0.25)


def draw_shape(rng: np.random.Generator, colour: str, shape: str, size: int = 64) -> Image.Image:
    background = rng.normal(128, 6, (size, size, 3)).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(background)
    draw = ImageDraw.Draw(im)
    r = int(rng.integers(24, 28))
    cx, cy = (size // 2 + int(v) for v in rng.integers(-2, 3, 2))
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return im


def questions(colour: str, shape: str) -> list[tuple[str, str, str]]:
    """(question, answer, question_type) four times for one image."""
    return [
        ("what colour is the shape?", colour, "colour"),
        ("what shape is shown in the image?", shape, "shape"),
        ("is the shape red?", "yes" if colour == "red" else "no", "colour"),
        ("is the shape round?", "yes" if shape == "circle" else "no", "shape"),
    ]


def make_vqa_set(
    root: Path, n_images: dict[str, int], seed: int = 0, noise_images: bool = False, fmt: str = "jsonl"
) -> Path:
    """``root/<split>.jsonl`` (or .csv) plus ``root/images``; ``noise_images`` replaces every image by noise
    (the question-only baseline: the same questions and answers, nothing to see)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, n in n_images.items():
        rows = []
        for k in range(n):
            colour = str(rng.choice(list(COLOURS), p=WEIGHTS))
            shape = str(rng.choice(SHAPES, p=WEIGHTS))
            im = draw_shape(rng, colour, shape)
            if noise_images:
                im = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            name = f"images/{split}_{k:04d}.png"
            im.save(root / name)
            for q, a, t in questions(colour, shape):
                rows.append({"image": name, "question": q, "answer": a, "question_type": t})
        if fmt == "jsonl":
            (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            import csv

            with open(root / f"{split}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    return root


def test_generated_set_is_balanced_and_image_dependent(tmp_path):
    root = make_vqa_set(tmp_path, {"train": 60}, seed=1)
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 240
    answers = Counter(r["answer"] for r in rows)
    assert set(answers) == {"yes", "no", *COLOURS, *SHAPES}
    assert 0.35 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.65
    # the same question has different answers on different images: the question alone does not decide
    by_question: dict[str, Counter] = {}
    for r in rows:
        by_question.setdefault(r["question"], Counter())[r["answer"]] += 1
    assert len(by_question) == 4
    for counts in by_question.values():
        assert len(counts) >= 2 and max(counts.values()) / sum(counts.values()) < 0.7
    # the drawn colour is the answer: the shape's pixels carry the named colour
    im = np.asarray(Image.open(root / rows[0]["image"]))
    target = np.array(COLOURS[rows[0]["answer"]])
    assert (np.abs(im.astype(int) - target).sum(-1) < 10).sum() > 200
