"""Run configurations of the three pretraining stages, read from YAML recipes with overrides.

A recipe is a YAML file with one mapping per stage (``tokenizer``, ``mim``, ``contrastive``). The package
ships ``tiny`` (tests, examples) and ``large`` (the published recipe); any other path works too. Every value
can be overridden (``key=value`` strings from the command line are converted to the field's type).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

__all__ = [
    "STAGES",
    "ContrastiveConfig",
    "MimConfig",
    "RunConfig",
    "TokenizerConfig",
    "load_config",
    "load_recipe",
    "parse_overrides",
    "recipe_names",
]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass
class RunConfig:
    """What every stage shares: where, how long, the optimizer and the runtime.

    ``batch_size`` is the global batch of one optimizer step (all processes and accumulation steps);
    ``steps`` the optimizer steps (``epochs`` instead, for sized data); ``warmup`` steps (or a fraction of
    the run when below 1); the lr follows a linear warm-up then a cosine to ``min_lr``.
    ``resume``: ``auto`` continues from the newest checkpoint in ``output_dir`` when there is one.
    """

    output_dir: str = "musk-pretrain"
    model: str = "musk_large_patch16_384"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup: float = 0.0
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    layer_decay: float = 1.0
    max_grad_norm: float | None = 1.0
    drop_path: float = 0.0
    precision: str = "auto"
    cpu: bool = False
    grad_checkpointing: bool = False
    num_workers: int = 0
    seed: int = 0
    save_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = False
    resume: str = "auto"
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "grad_accum", "save_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is None and self.epochs is None:
            raise ValueError("set steps (or epochs, for data of known size)")


@dataclass
class TokenizerConfig(RunConfig):
    """Stage 0, the VQ-KD visual tokenizer: a ViT encoder, an l2-normalised EMA codebook, a decoder that
    regresses a frozen teacher's patch features (cosine loss). ``teacher``: a timm model name;
    ``teacher_args``: further arguments for ``timm.create_model`` (``{depth: 6}``); ``teacher_weights``: a local
    file for it (None: timm's pretrained weights, or random with ``random``)."""

    images: list[str] = field(default_factory=list)
    teacher: str = "vit_large_patch16_224"
    teacher_args: dict[str, typing.Any] = field(default_factory=dict)
    teacher_weights: str | None = None
    img_size: int = 224
    patch_size: int = 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    decoder_depth: int = 3
    codebook_size: int = 8192
    code_dim: int = 32
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 1e-3


@dataclass
class MimConfig(RunConfig):
    """Stage 1, unified masked modelling on unpaired images and texts. ``batch_size`` counts images,
    ``text_batch_size`` texts; ``visual_tokenizer``: the stage-0 output folder (or its ``tokenizer.pt``)."""

    images: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    text_field: str = "text"
    tokenizer: str | None = None
    visual_tokenizer: str | None = None
    weights: str | None = None
    text_batch_size: int = 32
    mask_ratio: float = 0.4
    min_block: int = 16
    max_block: int = 100
    text_mask_ratio: float = 0.15
    max_len: int = 100
    min_tokens: int = 30
    fields: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    stain_jitter: float = 0.03
    color_jitter: float = 0.1


@dataclass
class ContrastiveConfig(RunConfig):
    """Stage 2, image-text alignment: CLIP loss plus ``mlm_weight`` x the caption decoder's MLM loss.
    ``weights``: the stage-1 result to start from (an export, or a stage-1 output folder). ``eval_pairs``:
    held-out pairs scored by retrieval (R@1/50/200 both ways) at every checkpoint, for model selection: the
    checkpoint with the highest ``select_by`` is kept (besides the newest) and is what the run exports."""

    pairs: list[str] = field(default_factory=list)
    eval_pairs: list[str] = field(default_factory=list)
    select_by: str = "mean_recall"
    image_key: str = "image"
    caption_key: str = "caption"
    tokenizer: str | None = None
    weights: str | None = None
    mlm_weight: float = 0.1
    decoder_depth: int = 4
    text_mask_ratio: float = 0.15
    max_len: int = 100
    fields: list[float] = field(default_factory=lambda: [1.0])
    stain_jitter: float = 0.03
    color_jitter: float = 0.1


STAGES: dict[str, type[RunConfig]] = {"tokenizer": TokenizerConfig, "mim": MimConfig, "contrastive": ContrastiveConfig}


def recipe_names() -> list[str]:
    """The recipes shipped in the package."""
    return sorted(p.name[:-5] for p in resources.files("musk.pretrain.recipes").iterdir() if p.name.endswith(".yaml"))


def load_recipe(recipe: str | os.PathLike, stage: str) -> dict:
    """The ``stage`` section of a shipped recipe (by name) or of a YAML file."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {sorted(STAGES)}")
    if str(recipe) in recipe_names():
        text = resources.files("musk.pretrain.recipes").joinpath(f"{recipe}.yaml").read_text()
        where = f"recipe {recipe!r}"
    else:
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {recipe!r} is neither a shipped recipe ({recipe_names()}) nor a file")
        text, where = path.read_text(), str(path)
    data = yaml.safe_load(text) or {}
    if stage not in data:
        raise ValueError(f"{where} has no {stage!r} section (it has {sorted(data)})")
    return dict(data[stage] or {})


def _convert(value, annotation):
    """A command-line string as the type of a dataclass field (lists are comma-separated, mappings YAML)."""
    if not isinstance(value, str):
        return value
    hint = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if value.lower() in ("none", "null") and type(None) in typing.get_args(annotation):
        return None
    if hint in (typing.Union, types.UnionType):
        return _convert(value, args[0])
    if hint is list:
        return [_convert(v, args[0]) for v in value.split(",") if v]
    if hint is dict:
        mapping = yaml.safe_load(value)
        if not isinstance(mapping, dict):
            raise ValueError(f"expected a YAML mapping such as {{depth: 6}}, got {value!r}")
        return mapping
    if annotation is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    return annotation(value)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["lr=1e-3", "steps=20"]`` -> ``{"lr": "1e-3", "steps": "20"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        out[key.strip()] = value
    return out


def load_config(stage: str, recipe: str | os.PathLike = "large", overrides: dict | None = None) -> RunConfig:
    """The resolved configuration of ``stage``: the recipe's values, then ``overrides`` on top."""
    cls = STAGES[stage] if stage in STAGES else None
    values = {**load_recipe(recipe, stage), **(overrides or {})}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown {stage} setting(s) {unknown}; known: {sorted(hints)}")
    try:
        converted = {k: _convert(v, hints[k]) for k, v in values.items()}
    except ValueError as e:
        raise ValueError(f"bad {stage} setting: {e}") from e
    return cls(**converted)


def config_dict(config: RunConfig) -> dict:
    """The configuration as a plain dict (for YAML/JSON)."""
    return dataclasses.asdict(config)
