"""The three pretraining stages as public functions: each assembles its model and data and hands them to
the shared loop (:func:`musk.pretrain.engine.train_stage`).

``train_tokenizer`` (stage 0, VQ-KD) -> ``train_mim`` (stage 1, masked image + language modelling on
unpaired data, targets from the stage-0 tokenizer) -> ``train_contrastive`` (stage 2, image-text alignment,
started from stage 1) -> :func:`musk.pretrain.export.export_weights`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import timm
import torch
from torch import nn

from ..settings import pick
from ..tokenizer import checked_tokenizer_path
from .augment import PretrainAugment
from .batching import MicroBatches
from .collate import ImageBatchMaker, PairBatchMaker, TextBatchMaker, TextWindows
from .config import ContrastiveConfig, MimConfig, RunConfig, TokenizerConfig
from .data import TextSource, image_source, pair_source
from .distributed import is_sharded
from .engine import StageSetup, TrainResult, train_stage
from .masking import BlockMaskGenerator, WholeWordMasker, word_start_table
from .models import ContrastiveModel, MaskedModellingModel
from .objectives import StepContext, share
from .retrieval import SELECTION_METRICS, RetrievalEvaluator
from .start import starting_point
from .vqkd import VQKD, VQKDConfig, load_visual_tokenizer, save_visual_tokenizer

__all__ = ["build_teacher", "train_contrastive", "train_mim", "train_tokenizer"]

logger = logging.getLogger(__name__)

#: Source ids: each data source's random choices are seeded apart from the others'.
_IMAGES, _TEXTS, _PAIRS = 1, 2, 3


def _augment(config: RunConfig, size: int, train: bool = True) -> PretrainAugment:
    jitter = getattr(config, "color_jitter", 0.1)
    return PretrainAugment(
        size, fields=tuple(getattr(config, "fields", (1.0,))), stain=getattr(config, "stain_jitter", 0.0),
        brightness=jitter, contrast=jitter, saturation=jitter, train=train,
    )  # fmt: skip


def _batches(config: RunConfig, source, maker, batch: int, source_id: int, positions, rank, world, **kw):
    return MicroBatches(source, maker, batch, seed=config.seed, source_id=source_id, rank=rank, world=world,
                        grad_accum=config.grad_accum, start=positions.get(kw.pop("name")), **kw)  # fmt: skip


def _text_masker(tokenizer, ratio: float) -> WholeWordMasker:
    return WholeWordMasker(tokenizer.mask_token_id, tokenizer.vocab_size, tuple(tokenizer.all_special_ids), ratio)


def _sized(source) -> int | None:
    return len(source) if hasattr(source, "__len__") else None


# ---- stage 0 ------------------------------------------------------------------------------------------
def build_teacher(name: str, weights: str | None, img_size: int, args: dict | None = None) -> nn.Module:
    """A frozen timm teacher: ``weights`` a local file, None for timm's pretrained weights, ``random`` for none;
    ``args`` further ``timm.create_model`` arguments."""
    kwargs = {**(args or {}), "num_classes": 0, "img_size": img_size}
    if weights == "random":
        teacher = timm.create_model(name, pretrained=False, **kwargs)
    elif weights is None:
        teacher = timm.create_model(name, pretrained=True, **kwargs)
    else:
        teacher = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights}, **kwargs)
    return teacher.eval().requires_grad_(False)


class _TeacherTargets:
    """Adds ``teacher`` (B, patches, D_teacher) to a batch: the frozen teacher's patch features, computed on
    the image re-normalised from MUSK's (0.5, 0.5, 0.5) statistics to the teacher's."""

    def __init__(self, teacher: nn.Module, device: torch.device):
        self.teacher = teacher.to(device)
        cfg = teacher.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.5,) * 3), device=device)[:, None, None]
        self.std = torch.tensor(cfg.get("std", (0.5,) * 3), device=device)[:, None, None]

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        x = (batch["images"] * 0.5 + 0.5 - self.mean) / self.std
        batch["teacher"] = self.teacher.forward_features(x)[:, self.teacher.num_prefix_tokens :]
        return batch


class _TokenizerTraining(nn.Module):
    def __init__(self, vqkd: VQKD):
        super().__init__()
        self.vqkd = vqkd

    @staticmethod
    def target_counts(batch: dict) -> dict[str, int]:
        return {}  # the cosine loss is a mean over equal micro-batches

    def forward(self, batch: dict, step: StepContext | None = None):
        return share(self.vqkd(batch["images"], batch["teacher"]), step)


def train_tokenizer(config: TokenizerConfig) -> TrainResult:
    """Stage 0: train the VQ-KD visual tokenizer on ``config.images``; writes ``visual_tokenizer.*`` to the
    output folder (stage 1's ``visual_tokenizer``) besides the checkpoints."""
    if not config.images:
        raise ValueError("no images: set images (image folders or WebDataset shards)")
    holder: dict = {}

    def build(accelerator) -> StageSetup:
        if is_sharded(accelerator):  # its weights are saved from this process's module, which FSDP shards
            raise ValueError("stage 0 (the visual tokenizer) runs on one process or under DDP, not FSDP: launch it "
                             "with a multi-GPU config such as docs/accelerate/8gpu.yaml")  # fmt: skip
        teacher = build_teacher(config.teacher, config.teacher_weights, config.img_size, config.teacher_args)
        vq_config = pick(VQKDConfig, config, teacher_dim=teacher.num_features)
        model = holder["model"] = _TokenizerTraining(VQKD(vq_config))
        source = image_source(config.images, config.shuffle_buffer)
        maker = ImageBatchMaker(_augment(config, config.img_size))

        def batches(positions, rank, world):
            return {"images": _batches(config, source, maker, config.batch_size, _IMAGES, positions, rank, world,
                                       name="images")}  # fmt: skip

        targets = _TeacherTargets(teacher, accelerator.device)
        return StageSetup(model, batches, config.batch_size, _sized(source), targets,
                          {"visual_tokenizer": asdict(vq_config)})  # fmt: skip

    result = train_stage(config, build, "tokenizer")
    save_visual_tokenizer(holder["model"].vqkd, result.output_dir, {"stage": "tokenizer", "steps": result.steps})
    return result


# ---- stage 1 ------------------------------------------------------------------------------------------
def train_mim(config: MimConfig) -> TrainResult:
    """Stage 1: masked image modelling (predict the visual tokenizer's codes of block-masked patches) plus
    masked language modelling (whole words) on unpaired ``images`` and ``texts``."""
    if not config.images or not config.texts:
        raise ValueError("stage 1 needs both images and texts (set images and texts)")
    if config.visual_tokenizer is None:
        raise ValueError("set visual_tokenizer: the output folder of `musk pretrain tokenizer` (stage 0)")
    if config.tokenizer is not None:
        checked_tokenizer_path(config.tokenizer)

    def build(accelerator) -> StageSetup:
        visual = load_visual_tokenizer(config.visual_tokenizer, accelerator.device)
        start = starting_point(config.weights, config.model, config.tokenizer, drop_path_rate=config.drop_path)
        musk, tokenizer = start.musk, start.tokenizer
        model = MaskedModellingModel(musk, visual.config.codebook_size)
        masks = BlockMaskGenerator.from_ratio(
            musk.config.grid_size, config.mask_ratio, min_block=config.min_block, max_block=config.max_block
        )
        images = image_source(config.images, config.shuffle_buffer)
        texts = TextSource.from_inputs(config.texts, config.text_field, config.shuffle_buffer)
        image_maker = ImageBatchMaker(_augment(config, musk.config.img_size), masks)
        text_maker = TextBatchMaker(_text_masker(tokenizer, config.text_mask_ratio), word_start_table(tokenizer),
                                    tokenizer.pad_token_id)  # fmt: skip
        windows = TextWindows(tokenizer, config.max_len, config.min_tokens)

        def batches(positions, rank, world):
            return {
                "images": _batches(config, images, image_maker, config.batch_size, _IMAGES, positions, rank, world,
                                   name="images"),
                "texts": _batches(config, texts, text_maker, config.text_batch_size, _TEXTS, positions, rank, world,
                                  name="texts", expand=windows),
            }  # fmt: skip

        def prepare(batch: dict) -> dict:
            with torch.no_grad():
                batch["codes"] = visual.encode(batch["images"].float())
            return batch

        return StageSetup(model, batches, config.batch_size, _sized(images), prepare,
                          {"visual_tokenizer": str(config.visual_tokenizer)}, weights=start.weights)  # fmt: skip

    return train_stage(config, build, "mim")


# ---- stage 2 ------------------------------------------------------------------------------------------
def train_contrastive(config: ContrastiveConfig) -> TrainResult:
    """Stage 2: CLIP alignment of image-caption ``pairs`` (negatives from the global batch) plus
    ``mlm_weight`` x the caption decoder's MLM loss; starts from ``weights`` (stage 1)."""
    if not config.pairs:
        raise ValueError("no pairs: set pairs (a CSV/JSONL table or WebDataset shards)")
    if config.tokenizer is not None:
        checked_tokenizer_path(config.tokenizer)

    def build(accelerator) -> StageSetup:
        start = starting_point(config.weights, config.model, config.tokenizer, drop_path_rate=config.drop_path)
        musk, tokenizer = start.musk, start.tokenizer
        model = ContrastiveModel(musk, config.decoder_depth, config.mlm_weight)
        pairs = pair_source(config.pairs, config.shuffle_buffer, image_key=config.image_key,
                            caption_key=config.caption_key)  # fmt: skip
        maker = PairBatchMaker(_augment(config, musk.config.img_size), tokenizer,
                               _text_masker(tokenizer, config.text_mask_ratio), word_start_table(tokenizer),
                               config.max_len)  # fmt: skip

        def batches(positions, rank, world):
            return {"pairs": _batches(config, pairs, maker, config.batch_size, _PAIRS, positions, rank, world,
                                      name="pairs")}  # fmt: skip

        evaluate = None
        if config.eval_pairs:
            if config.select_by not in SELECTION_METRICS:
                raise ValueError(f"select_by {config.select_by!r}: choose from {', '.join(SELECTION_METRICS)}")
            held_out = pair_source(config.eval_pairs, config.shuffle_buffer, image_key=config.image_key,
                                   caption_key=config.caption_key)  # fmt: skip
            evaluate = RetrievalEvaluator(held_out, tokenizer, musk.config.img_size, config.max_len)
        return StageSetup(model, batches, config.batch_size, _sized(pairs), evaluate=evaluate,
                          select_by=config.select_by, cache_features=True, weights=start.weights)  # fmt: skip

    return train_stage(config, build, "contrastive")
