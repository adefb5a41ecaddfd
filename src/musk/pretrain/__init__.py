"""MUSK pretraining: the visual tokenizer (stage 0), unified masked modelling on unpaired images and text
(stage 1), image-text contrastive alignment (stage 2), and the export to the published weights layout.

Each stage is one function taking its configuration (read from a YAML recipe with
:func:`load_config`); ``musk pretrain tokenizer | mim | contrastive | export`` runs the same functions,
alone or under ``accelerate launch``.
"""

from .config import ContrastiveConfig, MimConfig, RunConfig, TokenizerConfig, load_config, recipe_names
from .engine import TrainResult
from .export import export_weights
from .logs import read_log
from .masking import BlockMaskGenerator, WholeWordMasker, word_start_table
from .stages import train_contrastive, train_mim, train_tokenizer

__all__ = [
    "BlockMaskGenerator",
    "ContrastiveConfig",
    "MimConfig",
    "RunConfig",
    "TokenizerConfig",
    "TrainResult",
    "WholeWordMasker",
    "export_weights",
    "load_config",
    "read_log",
    "recipe_names",
    "train_contrastive",
    "train_mim",
    "train_tokenizer",
    "word_start_table",
]
