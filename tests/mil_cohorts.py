"""Generated MIL cohorts for the tests: h5 feature files (docs/architecture.md, "On-disk formats") and a manifest.

Classification: a positive case's bag holds a few *planted* patches shifted along a fixed direction among
background patches, some of which ("decoys") are shifted 0.4 as far in every bag, so a patch-level detector
is needed: averaging mixes the few planted patches with a variable number of decoys.
Survival: each case has a latent risk ``r``; a third of its patches are shifted by ``r`` along a direction,
event times are exponential with hazard ``0.1 * exp(1.5 r)`` and independently censored.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from musk.wsi.h5 import write_patch_file

PATCH = 256


def _attrs(name: str, n: int) -> dict:
    return {
        "patch_size": PATCH,
        "patch_size_level0": PATCH,
        "target_magnification": 20,
        "level0_magnification": 20,
        "level0_mpp": 0.5,
        "level0_width": PATCH * 16,
        "level0_height": PATCH * (n // 16 + 1),
        "name": name,
        "encoder": "generated",
        "feature_kind": "cls",
        "package_version": "test",
    }


def _write_slide(features_dir: Path, name: str, features: np.ndarray, planted: np.ndarray) -> None:
    n = len(features)
    coords = np.stack([(np.arange(n) % 16) * PATCH, (np.arange(n) // 16) * PATCH], 1)
    write_patch_file(
        features_dir / f"{name}.h5",
        coords,
        {"features": features, "planted": planted.astype(np.uint8)},
        _attrs(name, n),
    )


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def classification_cohort(
    root: Path,
    n_cases: int = 80,
    dim: int = 16,
    patches: tuple[int, int] = (60, 120),
    planted: tuple[int, int] = (2, 4),
    shift: float = 6.0,
    seed: int = 0,
    two_slides_every: int = 4,
    reports: bool = False,
) -> tuple[Path, Path, np.ndarray]:
    """A binary cohort ("tumor" / "normal", half each); returns (manifest, features_dir, labels per case).
    Every ``two_slides_every``-th case has two slides. ``reports`` adds a report column that names the label."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    features_dir = root / "features"
    direction = np.zeros(dim)
    direction[:4] = 0.5  # unit vector
    labels = np.arange(n_cases) % 2
    rng.shuffle(labels)
    rows = []
    for c, label in enumerate(labels):
        n_slides = 2 if two_slides_every and c % two_slides_every == 0 else 1
        for s in range(n_slides):
            n = int(rng.integers(*patches))
            x = rng.normal(size=(n, dim))
            decoys = rng.random(n) < rng.uniform(0.0, 0.3)
            x[decoys] += 0.4 * shift * direction
            mask = np.zeros(n, dtype=bool)
            if label == 1 and s == 0:
                mask[rng.choice(n, int(rng.integers(*planted)), replace=False)] = True
                x[mask] += shift * direction
                x[mask & decoys] -= 0.4 * shift * direction
            slide_id = f"slide{c:03d}_{s}"
            _write_slide(features_dir, slide_id, x.astype(np.float32), mask)
            row = {"slide_id": slide_id, "case_id": f"case{c:03d}", "label": "tumor" if label else "normal"}
            if reports:
                words = ["specimen", "received", "fixed", "sections", "show", "tissue", "with", "margins"]
                filler = " ".join(rng.choice(words, 8))
                finding = "invasive carcinoma present" if label else "no malignancy identified"
                row["report"] = f"{filler}. {finding}. {filler}."
            rows.append(row)
    return _write_manifest(root / "manifest.csv", rows), features_dir, labels


def survival_cohort(
    root: Path,
    n_cases: int = 120,
    dim: int = 16,
    patches: tuple[int, int] = (30, 60),
    seed: int = 0,
    reports: bool = False,
) -> tuple[Path, Path, np.ndarray]:
    """Cases with latent risk r ~ N(0, 1) carried by the patches; returns (manifest, features_dir, r).
    ``reports`` adds a report column naming the grade (high when r > 0)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    features_dir = root / "features"
    direction = np.zeros(dim)
    direction[:4] = 0.5
    risk = rng.normal(size=n_cases)
    event_time = rng.exponential(1 / (0.1 * np.exp(1.5 * risk)))
    censor_time = rng.exponential(20.0, size=n_cases)
    time = np.minimum(event_time, censor_time)
    event = (event_time <= censor_time).astype(int)
    rows = []
    for c in range(n_cases):
        n = int(rng.integers(*patches))
        x = rng.normal(size=(n, dim))
        carrying = rng.random(n) < 0.33
        x[carrying] += 2.0 * risk[c] * direction
        slide_id = f"slide{c:03d}"
        _write_slide(features_dir, slide_id, x.astype(np.float32), carrying)
        row = {"slide_id": slide_id, "case_id": f"case{c:03d}", "time": round(float(time[c]), 4), "event": event[c]}
        if reports:
            row["report"] = f"{'high' if risk[c] > 0 else 'low'} grade tumour, margins clear."
        rows.append(row)
    return _write_manifest(root / "manifest.csv", rows), features_dir, risk


SIGNALS = ("shift", "cluster", "spread")


def _tissue_background(rng: np.random.Generator, n: int, tissues: np.ndarray) -> np.ndarray:
    """``n`` background patches: a slide-specific mixture of tissue prototypes plus unit noise."""
    mix = rng.dirichlet(np.ones(len(tissues)))
    return tissues[rng.choice(len(tissues), n, p=mix)] + rng.normal(size=(n, tissues.shape[1]))


def _plant(rng: np.random.Generator, x: np.ndarray, mask: np.ndarray, signal: str, axes: np.ndarray, shift: float):
    """Make the patches at ``mask`` prognostic, along the orthonormal ``axes`` (8, D): ``shift`` moves them by
    ``shift`` along the first; ``cluster`` replaces them by a tight cluster at ``2 * shift`` along it; ``spread``
    multiplies their spread in the 8 directions by ``1 + shift`` (mean unchanged: the slide's mean feature does
    not show it)."""
    k = int(mask.sum())
    if signal == "shift":
        x[mask] += shift * axes[0]
    elif signal == "cluster":
        x[mask] = 2 * shift * axes[0] + 0.5 * rng.normal(size=(k, x.shape[1]))
    else:
        x[mask] += np.sqrt((1 + shift) ** 2 - 1) * rng.normal(size=(k, len(axes))) @ axes


def _censor(rng: np.random.Generator, event_time: np.ndarray, censoring: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent exponential censoring whose rate is set so that about ``censoring`` of the cases are censored."""
    if censoring <= 0:
        return event_time, np.ones(len(event_time), dtype=int)
    draws = rng.exponential(size=len(event_time))
    low, high = 1e-6, 1e6
    for _ in range(100):  # bisection on the log scale: the share censored grows with the rate
        rate = np.sqrt(low * high)
        low, high = (rate, high) if np.mean(draws / rate < event_time) < censoring else (low, rate)
    censor_time = draws / rate
    return np.minimum(event_time, censor_time), (event_time <= censor_time).astype(int)


def prognostic_cohort(
    root: Path,
    n_cases: int = 120,
    dim: int = 1024,
    patches: tuple[int, int] = (80, 240),
    strength: float = 1.5,
    shift: float = 1.5,
    censoring: float = 0.2,
    signal: str = "shift",
    seed: int = 0,
) -> tuple[Path, Path, np.ndarray]:
    """A survival cohort in which the share of prognostic patches in a slide sets the hazard.

    Each case has one slide of ``patches`` patches over a background of four tissue types mixed in slide-specific
    proportions; a fraction ``f ~ U(0.05, 0.45)`` of them is planted (``signal``, magnitude ``shift``, see
    :func:`_plant`). Event times (months) are exponential with log-hazard ``strength * z(f)`` (``z``:
    standardised) and about ``censoring`` of them are censored independently. Returns (manifest, features_dir,
    f per case); ``f`` as the risk score is the oracle c-index.
    """
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {SIGNALS}")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    features_dir = root / "features"
    tissues = 3.0 * rng.normal(size=(4, dim)) / np.sqrt(dim)  # four tissue types, about 3 apart
    axes = np.linalg.qr(rng.normal(size=(dim, 8)))[0].T
    fraction = rng.uniform(0.05, 0.45, size=n_cases)
    log_hazard = strength * (fraction - 0.25) / (0.4 / np.sqrt(12))
    time, event = _censor(rng, 24 * rng.exponential(size=n_cases) / np.exp(log_hazard), censoring)
    rows = []
    for c in range(n_cases):
        n = int(rng.integers(*patches))
        x = _tissue_background(rng, n, tissues)
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, int(round(fraction[c] * n)), replace=False)] = True
        _plant(rng, x, mask, signal, axes, shift)
        slide_id = f"slide{c:03d}"
        _write_slide(features_dir, slide_id, x.astype(np.float32), mask)
        rows.append(
            {"slide_id": slide_id, "case_id": f"case{c:03d}", "time": round(float(time[c]), 3), "event": event[c]}
        )
    return _write_manifest(root / "manifest.csv", rows), features_dir, fraction
