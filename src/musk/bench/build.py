"""``musk bench build``: result files -> one CSV, a markdown summary and PNG plots.

The CSV has one row per record: the run key, ``n_samples`` and every scalar metric. The markdown table and
the bar charts show each task's headline metric (:data:`HEADLINE`) as the mean over seeds, with the standard
deviation when there are several seeds; the few-shot curves plot it against k with the spread over seeds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import atomic_path, safe_filename
from ..tables import write_csv
from .results import all_records

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

HEADLINE = {
    "zeroshot_classification": "balanced_acc",
    "linear_probe": "balanced_acc",
    "knn": "balanced_acc",
    "image_retrieval": "acc_top1",
}
KEY_COLUMNS = ["model", "pretrained", "dataset", "task", "fewshot_k", "seed", "n_samples"]


def records_table(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per record: the run key and the scalar metrics (lists such as the confusion matrix left out)."""
    import pandas as pd

    rows = []
    for record in all_records(paths):
        row = {key: record.get(key) for key in KEY_COLUMNS}
        row.update({k: v for k, v in record.get("metrics", {}).items() if isinstance(v, (int, float)) or v is None})
        rows.append(row)
    if not rows:
        raise ValueError("the result files hold no records")
    return pd.DataFrame(rows)


def headline_metric(task: str, table: pd.DataFrame) -> str:
    """The metric a task is summarised by; for retrieval, text-to-image recall at the smallest k."""
    if task in HEADLINE:
        return HEADLINE[task]
    recalls = sorted(
        (c for c in table.columns if c.startswith("image_retrieval_recall@")), key=lambda c: int(c.split("@")[1])
    )
    if not recalls:
        raise ValueError(f"no headline metric for task {task!r}")
    return recalls[0]


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and seed count of each task's headline metric per (task, dataset, k, model)."""
    import pandas as pd

    parts = []
    for task, rows in table.groupby("task", sort=True):
        metric = headline_metric(task, rows)
        rows = rows.assign(fewshot_k=rows["fewshot_k"].fillna(-1).astype(int))
        grouped = rows.groupby(["dataset", "fewshot_k", "model"], sort=True)[metric]
        stats = grouped.agg(["mean", "std", "count"]).reset_index()
        stats.insert(0, "metric", metric)
        stats.insert(0, "task", task)
        parts.append(stats)
    return pd.concat(parts, ignore_index=True)


def markdown(stats: pd.DataFrame) -> str:
    """One table per task: rows (dataset, k), one column per model, cells "mean ± std (n seeds)"."""
    lines = []
    for task, rows in stats.groupby("task", sort=True):
        models = sorted(rows["model"].unique())
        lines += [f"## {task} ({rows['metric'].iloc[0]})", ""]
        lines.append("| dataset | k | " + " | ".join(models) + " |")
        lines.append("|---|---|" + "---|" * len(models))
        for (dataset, k), group in rows.groupby(["dataset", "fewshot_k"], sort=True):
            cells = []
            for model in models:
                hit = group[group["model"] == model]
                if hit.empty:
                    cells.append("")
                    continue
                mean, std, count = hit["mean"].iloc[0], hit["std"].iloc[0], int(hit["count"].iloc[0])
                cells.append(f"{mean:.4f} ± {std:.4f} (n={count})" if count > 1 else f"{mean:.4f}")
            lines.append(f"| {dataset} | {'all' if k < 0 else k} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _save(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot(stats: pd.DataFrame, folder: Path) -> list[Path]:
    """A bar chart per task (datasets x models, error bars = std over seeds) and, for tasks run with
    several k, few-shot curves per dataset (mean over seeds, band = ± std). Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task, rows in stats.groupby("task", sort=True):
        largest = rows.sort_values("fewshot_k").groupby(["dataset", "model"]).tail(1)
        datasets, models = sorted(largest["dataset"].unique()), sorted(largest["model"].unique())
        figure, ax = plt.subplots(figsize=(1.5 + 1.2 * len(datasets) * max(1, len(models)) / 2, 4))
        width = 0.8 / len(models)
        for m, model in enumerate(models):
            sub = largest[largest["model"] == model].set_index("dataset").reindex(datasets)
            ax.bar(
                np.arange(len(datasets)) + m * width,
                sub["mean"],
                width,
                yerr=sub["std"].fillna(0),
                label=model,
                capsize=3,
            )
        ax.set_xticks(np.arange(len(datasets)) + width * (len(models) - 1) / 2, datasets, rotation=20)
        ax.set_ylabel(rows["metric"].iloc[0])
        ax.set_title(task)
        ax.legend(fontsize="small")
        path = folder / f"{safe_filename(task)}.png"
        _save(figure, path)
        plt.close(figure)
        written.append(path)
        shots = rows[rows["fewshot_k"] > 0]
        for dataset, curve_rows in shots.groupby("dataset", sort=True):
            if curve_rows["fewshot_k"].nunique() < 2:
                continue
            figure, ax = plt.subplots(figsize=(5, 4))
            for model, curve in curve_rows.groupby("model", sort=True):
                curve = curve.sort_values("fewshot_k")
                ks, mean, std = (
                    curve["fewshot_k"].to_numpy(),
                    curve["mean"].to_numpy(),
                    curve["std"].fillna(0).to_numpy(),
                )
                ax.plot(ks, mean, marker="o", label=model)
                ax.fill_between(ks, mean - std, mean + std, alpha=0.2)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("shots per class (k)")
            ax.set_ylabel(rows["metric"].iloc[0])
            ax.set_title(f"{task}: {dataset}")
            ax.legend(fontsize="small")
            path = folder / safe_filename(f"{task}_{dataset}_fewshot.png")
            _save(figure, path)
            plt.close(figure)
            written.append(path)
    return written


def build(files: Sequence[str | os.PathLike], output: str | os.PathLike = "benchmark.csv") -> dict[str, list[Path]]:
    """Merge result files into ``output`` (CSV), ``<output stem>.md`` and PNG plots in ``<output stem>_plots/``."""
    output = Path(output)
    table = records_table(files)
    write_csv(output, list(table.columns), table.astype(object).where(table.notna(), "").itertuples(index=False))
    stats = summary(table)
    md = output.with_suffix(".md")
    with atomic_path(md) as tmp:
        tmp.write_text(markdown(stats))
    plots = plot(stats, output.parent / f"{output.stem}_plots")
    logger.info("wrote %s, %s and %d plot(s)", output, md, len(plots))
    return {"csv": [output], "markdown": [md], "plots": plots}
