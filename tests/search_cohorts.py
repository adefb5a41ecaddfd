"""Generated feature files for the search tests: h5 files in the CLAM/TRIDENT layout with the attributes ``musk
wsi extract`` writes, and labelled cohorts (cases of one or two slides) whose patches cluster by label."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from musk.wsi.h5 import write_patch_file

PATCH = 256
TINY = "musk_tiny_patch16_64"


def write_features(path: Path, features: np.ndarray, weights_sha256: str, kind: str = "cls", **attrs) -> Path:
    """An h5 feature file of ``features`` on a grid of 256-px patches (None attributes are left out)."""
    n = len(features)
    coords = np.stack([(np.arange(n) % 16) * PATCH, (np.arange(n) // 16) * PATCH], 1)
    values = {
        "name": path.stem,
        "patch_size": PATCH,
        "patch_size_level0": PATCH,
        "target_magnification": 20.0,
        "level0_magnification": 20.0,
        "encoder": TINY,
        "weights_sha256": weights_sha256,
        "feature_kind": kind,
        **attrs,
    }
    return write_patch_file(path, coords, {"features": features}, values)


def labelled_cohort(
    root: Path,
    weights_sha256: str,
    dim: int = 64,
    labels: tuple[str, ...] = ("tumor", "normal", "stroma"),
    cases: int = 12,
    noise: float = 1.5,
    spread: float = 2.0,
    seed: int = 0,
) -> tuple[Path, Path]:
    """``cases`` cases (every third with two slides), labels in turn; a slide's cls features are its label's
    centre plus a slide offset (sd ``spread``) plus patch noise. Returns (features folder, manifest with slide,
    case, label)."""
    rng = np.random.default_rng(seed)
    features_dir = root / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    centres = {label: rng.normal(0, 1, dim) for label in labels}
    rows = []
    for c in range(cases):
        label = labels[c % len(labels)]
        for s in range(2 if c % 3 == 0 else 1):
            name = f"case{c:02d}_{'AB'[s]}"
            offset = rng.normal(0, spread, dim)
            n = int(rng.integers(12, 30))
            features = centres[label] + offset + rng.normal(0, noise, (n, dim))
            write_features(features_dir / f"{name}.h5", features.astype(np.float32), weights_sha256)
            rows.append({"slide": name, "case": f"case{c:02d}", "label": label})
    manifest = root / "cases.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide", "case", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return features_dir, manifest


def project(features: np.ndarray, head_weight: np.ndarray) -> np.ndarray:
    """The independent projection: the vision head (a bias-free linear map) on the first D columns, normalised."""
    dim = head_weight.shape[1]
    x = features[:, :dim].astype(np.float64) @ head_weight.astype(np.float64).T
    return x / np.linalg.norm(x, axis=1, keepdims=True)
