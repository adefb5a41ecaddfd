"""Running the benchmark: every (model, dataset, task[, fewshot_k, seed]) combination, one record each."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..files import check_file_target
from ..provenance import provenance
from ..runtime import DTYPES
from .data import BenchData
from .datasets import default_task, load_dataset
from .features import FeatureStore
from .models import ModelAdapter, load_adapter
from .results import has_record, read_records, write_record
from .tasks import (
    SUPERVISED_TASKS,
    TASKS,
    TEXT_TASKS,
    image_retrieval,
    knn,
    linear_probe,
    zeroshot_classification,
    zeroshot_retrieval,
)

logger = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """Every option of a benchmark run (the CLI flags, upstream names)."""

    models: list[tuple[str, str]]
    datasets: list[str]
    dataset_root: str = "root"
    task: str = "auto"
    output: str = "result.json"
    recall_k: list[int] = field(default_factory=lambda: [5])
    fewshot_k: list[int] = field(default_factory=lambda: [-1])
    seeds: list[int] = field(default_factory=lambda: [0])
    fewshot_epochs: int = 10
    fewshot_lr: float = 0.1
    weight_decays: list[float] = field(default_factory=lambda: [0.0])
    probe_batch_size: int = 256
    knn_k: int = 20
    ms_aug: bool = False
    skip_existing: bool = False
    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    feature_root: str | None = None
    tokenizer: str | None = None
    custom_classname_file: str | None = None
    custom_template_file: str | None = None
    cache_dir: str | None = None
    progress: bool = False


def _slug(text: str) -> str:
    return text.replace("/", "_").replace(":", "_")


def output_path(template: str, model: str, pretrained: str, dataset: str, task: str, k: int, seed: int) -> Path:
    """``--output`` with its placeholders filled: ``{model}``, ``{pretrained}`` (a file's base name),
    ``{pretrained_full_path}``, ``{dataset}``, ``{task}``, ``{language}`` (``en``), ``{fewshot_k}``, ``{seed}``."""
    is_file = bool(pretrained) and Path(pretrained).is_file()
    return Path(
        template.format(
            model=_slug(model),
            pretrained=Path(pretrained).name if is_file else _slug(pretrained),
            pretrained_full_path=_slug(pretrained),
            dataset=_slug(dataset),
            task=task,
            language="en",
            fewshot_k=k,
            seed=seed,
        )
    )


def _runs(task: str, config: BenchConfig) -> list[tuple[int | None, int]]:
    if task in SUPERVISED_TASKS:
        return [(k, seed) for k in config.fewshot_k for seed in config.seeds]
    return [(None, config.seeds[0])]


def _task(dataset: str, config: BenchConfig) -> str:
    return default_task(dataset) if config.task == "auto" else config.task


def _output_paths(config: BenchConfig):
    for name, pretrained in config.models:
        for dataset in config.datasets:
            task = _task(dataset, config)
            for k, seed in _runs(task, config):
                yield output_path(config.output, name, pretrained, dataset, task, k, seed)


def check_output(path: Path) -> None:
    """Fail before any evaluation when results could not be added to ``path`` (a folder, a path under a file,
    an existing file that is not a results file)."""
    check_file_target(path, "--output", "results file (e.g. results.json)")
    if path.is_file():
        read_records(path)  # names the bad line of a file that is not JSON Lines


def _evaluate(task, adapter, data, train, store, config, k, seed) -> dict:
    if task == "zeroshot_classification":
        return zeroshot_classification.evaluate(adapter, data, store)
    if task == "zeroshot_retrieval":
        return zeroshot_retrieval.evaluate(adapter, data, store, config.recall_k)
    if task == "image_retrieval":
        return image_retrieval.evaluate(adapter, data, store)
    if task == "linear_probe":
        return linear_probe.evaluate(
            adapter,
            train,
            data,
            store,
            fewshot_k=k,
            seed=seed,
            lr=config.fewshot_lr,
            epochs=config.fewshot_epochs,
            weight_decays=config.weight_decays,
            batch_size=config.probe_batch_size,
            ms_aug=config.ms_aug,
            device=adapter.device,
        )
    return knn.evaluate(adapter, train, data, store, k=config.knn_k, fewshot_k=k, seed=seed, ms_aug=config.ms_aug)


def run_benchmark(config: BenchConfig) -> list[dict]:
    """Evaluate every model on every dataset; returns the records written (skipped runs excluded)."""
    unknown = [t for t in [config.task] if t != "auto" and t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; use auto or one of {sorted(TASKS)}")
    knn.check_k(config.knn_k)
    for path in dict.fromkeys(_output_paths(config)):
        check_output(path)
    store = FeatureStore(config.feature_root, config.batch_size, config.num_workers, config.progress)
    written = []
    for name, pretrained in config.models:
        adapter: ModelAdapter | None = None
        for dataset in config.datasets:
            task = _task(dataset, config)
            pending = []
            for k, seed in _runs(task, config):
                path = output_path(config.output, name, pretrained, dataset, task, k, seed)
                key = (name, pretrained, dataset, task, k, seed)
                if config.skip_existing and has_record(path, key):
                    logger.info("skip %s on %s (%s, k=%s, seed=%s): in %s already", name, dataset, task, k, seed, path)
                    continue
                pending.append((k, seed, path))
            if not pending:
                continue
            if adapter is None:
                adapter = load_adapter(
                    name, pretrained, config.device, DTYPES[config.precision], config.tokenizer, config.cache_dir
                )
            if task in TEXT_TASKS and not adapter.has_text:
                raise ValueError(
                    f"{name} has no text encoder; {task} needs one (use linear_probe, knn or image_retrieval)"
                )
            data = _load(dataset, config, "test")
            train = _load(dataset, config, "train") if task in SUPERVISED_TASKS else None
            for k, seed, path in pending:
                logger.info("running %s on %s with %s (k=%s, seed=%s)", task, dataset, name, k, seed)
                torch.manual_seed(seed)
                metrics = _evaluate(task, adapter, data, train, store, config, k, seed)
                record = _record(config, adapter, dataset, len(data.images), task, k, seed, metrics)
                write_record(path, record)
                written.append(record)
                logger.info("wrote %s", path)
    return written


def _load(dataset: str, config: BenchConfig, split: str) -> BenchData:
    return load_dataset(dataset, config.dataset_root, split, config.custom_classname_file, config.custom_template_file)


def _record(config, adapter: ModelAdapter, dataset, n_samples, task, k, seed, metrics) -> dict:
    settings = asdict(config)
    settings["models"] = [list(m) for m in config.models]
    record = {
        "dataset": dataset,
        "model": adapter.name,
        "pretrained": adapter.pretrained,
        "task": task,
        "metrics": metrics,
        "language": "en",
        "fewshot_k": k,
        "seed": seed,
        "n_samples": n_samples,
        "package_version": __version__,
        "weights_sha256": adapter.weights_id(),
    }
    record.update(provenance(settings))
    return record


__all__ = ["BenchConfig", "output_path", "run_benchmark"]
