"""Does a survival MIL model learn? Its cross-validated c-index beside the linear baseline's, in the same folds.

    python benchmarks/mil_survival.py --seeds 0 1 2 --runs "" "survival_loss=cox" "model=mean" "lr=2e-4"

For each seed, generates a cohort with ``prognostic_cohort`` from ``tests/mil_cohorts.py`` (one slide per case;
the share of planted patches in a slide sets its hazard) in a temporary folder, then cross-validates on it:
the planted share itself as the risk (the oracle), ``musk mil train --model linear`` (ridge Cox on the mean
feature, penalty chosen inside the training folds) and each run of ``--runs``: ``key=value`` settings of
``MILTrainConfig`` over the defaults (``""`` = the defaults), separated by spaces. Every run sees the same folds
(``--folds``, seed 0). Prints, per run, the mean over folds of Harrell's c-index for each cohort, their mean,
the mean gap to the baseline, the Spearman correlation of the out-of-fold risks with the planted share, the
selected epochs and how many folds were reported as not learned.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mil_cohorts import SIGNALS, prognostic_cohort  # noqa: E402
from musk.mil import MILTrainConfig, train_mil  # noqa: E402
from musk.settings import build, parse_overrides  # noqa: E402


def oracle_c_index(run_dir: Path, fraction: np.ndarray) -> float:
    """The mean over folds of the c-index of the planted share, in the folds of the run in ``run_dir``."""
    from sksurv.metrics import concordance_index_censored

    predictions = pd.read_csv(run_dir / "predictions.csv")
    share = fraction[predictions.case_id.str.removeprefix("case").astype(int)]
    return float(
        np.mean(
            [
                concordance_index_censored(group.event.astype(bool), group.time, share[group.index])[0]
                for _, group in predictions.groupby("fold")
            ]
        )
    )


def run_once(cohort: Path, out: Path, settings: dict, fraction: np.ndarray) -> dict:
    """Cross-validate ``settings`` on the cohort; its c-index, the risks' Spearman with the share, epochs, time."""
    from scipy.stats import spearmanr

    start = time.perf_counter()
    values = {
        "manifest": str(cohort / "manifest.csv"),
        "features_dir": str(cohort / "features"),
        "output_dir": str(out),
        "task": "survival",
        "device": "cpu",
        **settings,
    }
    result = train_mil(build(MILTrainConfig, values, "--runs"))
    predictions = pd.read_csv(result.predictions)
    share = fraction[predictions.case_id.str.removeprefix("case").astype(int)]
    selected = [json.loads((out / f"fold_{k}" / "selection.json").read_text()) for k in range(len(result.per_fold))]
    learned = result.results["learned"]["folds"]  # None: not judged (no validation cases)
    return {
        "c_index": result.results["c_index"]["mean"],
        "spearman": float(spearmanr(predictions.risk, share)[0]),
        "epochs": [s.get("epoch", 0) for s in selected],
        "not_learned": sum(ok is False for ok in learned),
        "seconds": time.perf_counter() - start,
    }


def make_cohort(args: argparse.Namespace, seed: int, root: Path) -> tuple[Path, np.ndarray]:
    """The cohort of ``seed`` (reused from ``--cohorts_dir`` when it was generated there with these settings)."""
    settings = [args.cases, args.dim, tuple(args.patches), args.strength, args.shift, args.censoring, args.signal]
    name = "_".join(str(v) for v in [*settings[:2], *settings[2], *settings[3:], seed])
    cohort = Path(args.cohorts_dir) / name if args.cohorts_dir else root / name
    if (cohort / "fraction.npy").is_file():
        return cohort, np.load(cohort / "fraction.npy")
    _, _, fraction = prognostic_cohort(cohort, *settings, seed)
    np.save(cohort / "fraction.npy", fraction)
    return cohort, fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--patches", type=int, nargs=2, default=(80, 240))
    parser.add_argument("--strength", type=float, default=1.0, help="log-hazard per standard deviation of the share")
    parser.add_argument("--shift", type=float, default=1.0, help="how far planted patches are from the others")
    parser.add_argument("--censoring", type=float, default=0.2)
    parser.add_argument("--signal", choices=SIGNALS, default="shift")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--runs", nargs="+", default=[""], help='settings per run, e.g. "lr=2e-4 epochs=20"')
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tmp_dir", default=None, help="where cohorts and runs are written (then deleted)")
    parser.add_argument("--cohorts_dir", default=None, help="keep the generated cohorts here and reuse them")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = {"linear (baseline)": {"model": "linear"}} | {
        run or "defaults": parse_overrides(run.split(), "--runs") for run in args.runs
    }
    table: dict[str, list[dict]] = {name: [] for name in ["oracle (planted share)", *runs]}
    root = Path(tempfile.mkdtemp(prefix="musk-mil-survival-", dir=args.tmp_dir))
    try:
        for seed in args.seeds:
            cohort, fraction = make_cohort(args, seed, root)
            manifest = cohort / "manifest.csv"
            events = int(pd.read_csv(manifest).event.sum())
            for i, (name, settings) in enumerate(runs.items()):
                settings = {"folds": args.folds, **settings}
                table[name].append(run_once(cohort, root / f"run{seed}_{i}", settings, fraction))
                print(f"seed {seed} ({events} events) {name}: {table[name][-1]}", flush=True)
            table["oracle (planted share)"].append({"c_index": oracle_c_index(root / f"run{seed}_0", fraction)})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(table, args.seeds)


def print_table(table: dict[str, list[dict]], seeds: list[int]) -> None:
    baseline = np.array([r["c_index"] for r in table["linear (baseline)"]])
    columns = [f"seed {s}" for s in seeds] + ["mean", "vs baseline", "Spearman", "epochs", "not learned"]
    print("\n| run | " + " | ".join(columns) + " |")
    print("|---" * (len(seeds) + 6) + "|")
    for name, results in table.items():
        c = np.array([r["c_index"] for r in results])
        spearman = np.mean([r["spearman"] for r in results]) if "spearman" in results[0] else np.nan
        epochs = [e for r in results for e in r.get("epochs", [])]
        not_learned = sum(r.get("not_learned", 0) for r in results)
        print(
            f"| {name} | "
            + " | ".join(f"{v:.3f}" for v in c)
            + f" | **{c.mean():.3f}** | {np.mean(c - baseline):+.3f} | {spearman:.2f} | "
            + (f"{min(epochs)}-{max(epochs)}" if epochs else "-")
            + f" | {not_learned} |"
        )


if __name__ == "__main__":
    main()
