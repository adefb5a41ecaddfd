"""``config.json``: the settings a job's outputs were made with, pinned so that a rerun with other ones is refused.

Only the settings a stage's outputs depend on are pinned (:data:`musk.wsi.config.STAGE_SETTINGS`), and only for
the stages run so far: a later stage is free until it first runs. A setting older versions did not pin is
compared with the value their last run used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from ..files import write_json
from ..provenance import provenance
from .config import STAGE_SETTINGS, WsiJobConfig
from .layout import JobLayout, saved_job_record
from .model import JobModel

__all__ = ["check_pinned", "pin_settings", "stage_settings"]

#: What versions before the weights fingerprint of random weights (their parameters' sha256) pinned for them.
LEGACY_RANDOM = "random"


def stage_settings(config: WsiJobConfig, stages: Sequence[str], weights_sha256: str | None = None) -> dict:
    """The pinned settings of ``stages`` (``weights_sha256`` left out while the model is not loaded yet)."""
    values = asdict(config) | {"weights_sha256": weights_sha256}
    return {
        stage: {k: values[k] for k in keys if values[k] is not None or k != "weights_sha256"}
        for stage, keys in STAGE_SETTINGS.items()
        if stage in stages
    }


def check_pinned(layout: JobLayout, settings: dict[str, dict], random_seed: int | None = None) -> dict[str, dict]:
    """The job's pinned settings updated with ``settings``; ``ValueError`` naming each one that differs.

    ``random_seed``: this run's seed when its weights are random. Versions before random weights were
    fingerprinted by their parameters pinned ``weights_sha256: "random"``; with random weights seeded alike (the
    same parameters), that stands for this run's fingerprint.
    """
    record = saved_job_record(layout.root)
    if record is None:
        return settings
    last_run = record.get("config", {})
    earlier = _legacy_random(record.get("settings", {}), settings, random_seed == last_run.get("seed", 0))
    for stage, values in settings.items():
        if earlier.get(stage) is None:
            continue
        old = {k: last_run[k] for k in values if k in last_run} | earlier[stage]
        changed = {k: (old.get(k), v) for k, v in values.items() if old.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            raise ValueError(
                f"{layout.root} was made with other {stage} settings ({detail}); use a new --job_dir or the earlier "
                "settings"
            )
    return {**earlier, **settings}


def _legacy_random(earlier: dict, settings: dict, seeded_alike: bool) -> dict:
    old, new = earlier.get("extract") or {}, settings.get("extract") or {}
    if old.get("weights_sha256") == LEGACY_RANDOM and seeded_alike and "weights_sha256" in new:
        return {**earlier, "extract": {**old, "weights_sha256": new["weights_sha256"]}}
    return earlier


def pin_settings(
    layout: JobLayout, config: WsiJobConfig, stages: Sequence[str], model: JobModel | None, slides: list[str]
) -> None:
    """Check this run's settings against the pinned ones and write ``config.json`` (hold the job files' lock:
    it reads, then rewrites the file)."""
    settings = stage_settings(config, stages, model.weights_sha256 if model is not None else None)
    random_seed = config.seed if model is not None and model.loaded.weights.random else None
    pinned = check_pinned(layout, settings, random_seed)
    record = provenance({"stages": list(stages), **asdict(config)}, model.loaded.fingerprint if model else None)
    if model is not None and model.tokenizer_record() is not None:
        record["tokenizer"] = model.tokenizer_record()
    record["settings"] = pinned
    record["slides"] = slides
    write_json(layout.config, record)
