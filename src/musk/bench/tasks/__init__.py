"""One module per task, each with one ``evaluate(...)`` returning a dict of metrics."""

from . import image_retrieval, knn, linear_probe, zeroshot_classification, zeroshot_retrieval

TASKS = {
    "zeroshot_classification": zeroshot_classification,
    "zeroshot_retrieval": zeroshot_retrieval,
    "linear_probe": linear_probe,
    "knn": knn,
    "image_retrieval": image_retrieval,
}
#: Tasks that train on a train split and test on the test split.
SUPERVISED_TASKS = ("linear_probe", "knn")
#: Tasks that need a text encoder.
TEXT_TASKS = ("zeroshot_classification", "zeroshot_retrieval")

__all__ = ["SUPERVISED_TASKS", "TASKS", "TEXT_TASKS"]
