"""The paper's patch-level benchmark: datasets, tasks, metrics, feature cache, model adapters, runner.

``musk bench eval`` (or ``python -m musk.bench eval``) runs it from the command line; from Python::

    from musk.bench import BenchConfig, run_benchmark
    run_benchmark(BenchConfig(models=[("musk_large_patch16_384", "hf_hub:xiangjx/musk")], datasets=["pannuke"],
                              dataset_root="/data/downstreams_demo", task="linear_probe", fewshot_k=[10]))
"""

from .build import build
from .data import UPSTREAM_TEMPLATES, BenchData, DatasetLayoutError
from .datasets import DATASETS, load_dataset
from .features import FeatureStore
from .models import load_adapter, parse_models
from .runner import BenchConfig, run_benchmark

__all__ = [
    "DATASETS",
    "UPSTREAM_TEMPLATES",
    "BenchConfig",
    "BenchData",
    "DatasetLayoutError",
    "FeatureStore",
    "build",
    "load_adapter",
    "load_dataset",
    "parse_models",
    "run_benchmark",
]
