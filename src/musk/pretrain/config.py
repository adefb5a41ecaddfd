"""Run configurations of the three pretraining stages, read from YAML recipes with overrides.

A recipe is a YAML file with one mapping per stage (``tokenizer``, ``mim``, ``contrastive``). The package
ships ``tiny`` (tests, examples) and ``large`` (the published recipe); any other path works too. Every value
can be overridden; values are converted and checked by :func:`musk.settings.build` (``key=value`` strings from
the command line become the field's type; an unknown key or a wrong type is an error naming it).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from importlib import resources

from ..messages import listing
from ..settings import SettingsError, build, load_yaml
from ..training.precision import ACCELERATE_PRECISIONS
from .vqkd import VQKDArchitecture

__all__ = [
    "STAGES",
    "ContrastiveConfig",
    "MimConfig",
    "RunConfig",
    "TokenizerConfig",
    "load_config",
    "load_recipe",
    "recipe_names",
]


@dataclass
class RunConfig:
    """What every stage shares: where, how long, the optimizer and the runtime.

    ``batch_size`` is the global batch of one optimizer step (all processes and accumulation steps);
    ``steps`` the optimizer steps (``epochs`` instead, for sized data); ``warmup`` steps (or a fraction of
    the run when below 1); the lr follows a linear warm-up then a cosine to ``min_lr``. ``precision``:
    accelerate's mixed precision (``auto``: bf16 on a GPU that has it, fp16 on other GPUs, fp32 on CPU).
    ``resume``: ``auto`` continues from the newest checkpoint in ``output_dir`` when there is one, ``never``
    starts afresh, a checkpoint folder continues from it.
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
        if self.precision not in ACCELERATE_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(ACCELERATE_PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "grad_accum", "save_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is None and self.epochs is None:
            raise ValueError("set steps (or epochs, for data of known size)")


@dataclass
class TokenizerConfig(RunConfig, VQKDArchitecture):
    """Stage 0, the VQ-KD visual tokenizer (its architecture settings: :class:`~musk.pretrain.vqkd.VQKDArchitecture`):
    a ViT encoder, an l2-normalised EMA codebook, a decoder that regresses a frozen teacher's patch features
    (cosine loss). ``teacher``: a timm model name; ``teacher_args``: further arguments for ``timm.create_model``
    (``{depth: 6}``); ``teacher_weights``: a local file for it (None: timm's pretrained weights, or random with
    ``random``)."""

    images: list[str] = field(default_factory=list)
    teacher: str = "vit_large_patch16_224"
    teacher_args: dict[str, typing.Any] = field(default_factory=dict)
    teacher_weights: str | None = None


@dataclass
class MimConfig(RunConfig):
    """Stage 1, unified masked modelling on unpaired images and texts. ``batch_size`` counts images,
    ``text_batch_size`` texts; ``visual_tokenizer``: the stage-0 output folder (or its ``visual_tokenizer.json``);
    ``weights``: where MUSK starts (None or ``none``: random; ``published``, a hub id, a file, or a run folder);
    ``tokenizer``: the text tokenizer (default: beside local weights, else the hub's)."""

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
    ``weights``: the stage-1 result to start from (a stage-1 output folder, an export, ``published``, ...).
    ``eval_pairs``: held-out pairs scored by retrieval (R@1/50/200 both ways) at every checkpoint, for model
    selection: the checkpoint with the highest ``select_by`` is kept (besides the newest) and is what the run
    exports."""

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


def _read_recipe(recipe: str | os.PathLike) -> tuple[dict, str]:
    """A recipe's stages and where it came from (for messages)."""
    if str(recipe) in recipe_names():
        with resources.as_file(resources.files("musk.pretrain.recipes").joinpath(f"{recipe}.yaml")) as path:
            return load_yaml(path), f"recipe {recipe!r}"
    if not os.path.isfile(recipe):
        raise FileNotFoundError(f"recipe {recipe!r} is neither a shipped recipe ({listing(recipe_names())}) nor a file")
    return load_yaml(recipe), str(recipe)


def load_recipe(recipe: str | os.PathLike, stage: str) -> dict:
    """The ``stage`` section of a shipped recipe (by name) or of a YAML file."""
    _stage_class(stage)
    data, where = _read_recipe(recipe)
    if stage not in data:
        raise SettingsError(f"{where} has no {stage!r} section (it has {listing(data) or 'none'})")
    section = data[stage] or {}
    if not isinstance(section, dict):
        raise SettingsError(f"{where}: the {stage!r} section must be a mapping of settings, not {section!r}")
    return dict(section)


def load_config(stage: str, recipe: str | os.PathLike = "large", overrides: dict | None = None) -> RunConfig:
    """The resolved configuration of ``stage``: the recipe's values, then ``overrides`` on top."""
    cls = _stage_class(stage)
    source = f"{stage} settings of recipe {str(recipe)!r}" + (" with overrides" if overrides else "")
    return build(cls, {**load_recipe(recipe, stage), **(overrides or {})}, source)


def _stage_class(stage: str) -> type[RunConfig]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    return STAGES[stage]


def config_dict(config: RunConfig) -> dict:
    """The configuration as a plain dict (for YAML/JSON)."""
    return dataclasses.asdict(config)
