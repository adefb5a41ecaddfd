"""The provenance record saved next to every output: the resolved configuration, versions and weights."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Mapping

from .files import file_sha256


def provenance(config: dict, weights: Mapping | str | os.PathLike | None = None) -> dict:
    """The resolved configuration plus the versions and weights that produced an output.

    ``weights``: a loaded model's fingerprint (``LoadedModel.fingerprint``), or the path of a weights file.
    """
    import timm
    import torch

    from . import __version__

    record = {
        "config": config,
        "versions": {
            "musk-pathology": __version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if isinstance(weights, Mapping):
        record["weights"] = dict(weights)
    elif weights is not None:
        record["weights"] = {"path": str(weights), "sha256": file_sha256(weights)}
    return record
